"""Signed, expiring, revocable links (portal documents, one-click unsubscribe, reply tokens).

A token is a Django-signed reference to a `SignedLink` row's random nonce, salted by purpose: a
token made for one purpose does not open another, a tampered token fails the signature, and the
row makes it expire, be revoked, or be spent once.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.contenttypes.models import ContentType
from django.core import signing
from django.db import models, transaction
from django.utils import timezone

from ccm.models import SignedLink


class LinkInvalid(Exception):
    """The token is tampered, unknown, expired, revoked or spent. `reason` says which; never
    show it to the person holding the link."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _salt(purpose: str) -> str:
    return f"ccm.links.{purpose}"


def link_create(
    *,
    subject: models.Model,
    purpose: str,
    ttl: timedelta,
    single_use: bool = False,
    data: dict | None = None,
) -> str:
    """Create a link row and return its token."""
    link = SignedLink.objects.create(
        nonce=secrets.token_urlsafe(24),
        purpose=purpose,
        subject_type=ContentType.objects.get_for_model(subject),
        subject_id=str(subject.pk),
        data=data or {},
        single_use=single_use,
        expires_at=timezone.now() + ttl,
    )
    return token_for(link)


def token_for(link: SignedLink) -> str:
    return signing.dumps({"n": link.nonce}, salt=_salt(link.purpose), compress=False)


def _decoy_nonce(token: str) -> str:
    # "!" is not in token_urlsafe's alphabet: no link has this nonce.
    return "!" + hashlib.sha256(token.encode()).hexdigest()[:31]


def _resolve(token: str, *, purpose: str) -> SignedLink:
    try:
        nonce = signing.loads(token, salt=_salt(purpose))["n"]
    except (signing.BadSignature, KeyError, TypeError):
        nonce = None
    forged = not isinstance(nonce, str)
    # A forged token does the same work as a real one — the same lookup, on a key no link has —
    # so the time of the answer does not tell a guesser that a signature was good (and so that
    # the link behind it once existed).
    link = SignedLink.objects.filter(
        nonce=_decoy_nonce(token) if forged else nonce, purpose=purpose
    ).first()
    if forged:
        raise LinkInvalid("bad signature")
    if link is None:
        raise LinkInvalid("unknown link")
    if link.revoked_at is not None:
        raise LinkInvalid("revoked")
    if link.expires_at <= timezone.now():
        raise LinkInvalid("expired")
    return link


def link_peek(token: str, *, purpose: str) -> SignedLink:
    """Resolve a token without using it up (for a page that shows before it acts)."""
    link = _resolve(token, purpose=purpose)
    if link.single_use and link.used_at is not None:
        raise LinkInvalid("already used")
    return link


@transaction.atomic
def link_use(token: str, *, purpose: str) -> SignedLink:
    """Resolve a token and count its use; a single-use link is spent exactly once even when two
    requests race for it."""
    link = _resolve(token, purpose=purpose)
    now = timezone.now()
    claimed = SignedLink.objects.filter(pk=link.pk)
    if link.single_use:
        claimed = claimed.filter(used_at__isnull=True)
    if claimed.update(used_at=now, use_count=models.F("use_count") + 1) != 1:
        raise LinkInvalid("already used")
    link.refresh_from_db()
    return link


def link_revoke(*, subject: models.Model, purpose: str | None = None) -> int:
    """Revoke every live link to `subject` (of one purpose, or all)."""
    qs = SignedLink.objects.filter(
        subject_type=ContentType.objects.get_for_model(subject),
        subject_id=str(subject.pk),
        revoked_at__isnull=True,
    )
    if purpose:
        qs = qs.filter(purpose=purpose)
    return qs.update(revoked_at=timezone.now())
