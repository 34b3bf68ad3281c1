from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from freezegun import freeze_time

from ccm import links


@pytest.fixture
def subject(db):
    return Group.objects.create(name="document-42")


def test_link_resolves_to_its_subject(subject):
    token = links.link_create(subject=subject, purpose="portal", ttl=timedelta(days=7))
    link = links.link_use(token, purpose="portal")
    assert link.subject == subject
    assert link.use_count == 1


def test_tampered_token_is_refused(subject):
    token = links.link_create(subject=subject, purpose="portal", ttl=timedelta(days=7))
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(links.LinkInvalid) as excinfo:
        links.link_use(tampered, purpose="portal")
    assert excinfo.value.reason == "bad signature"


def test_token_for_one_purpose_does_not_open_another(subject):
    token = links.link_create(subject=subject, purpose="portal", ttl=timedelta(days=7))
    with pytest.raises(links.LinkInvalid):
        links.link_use(token, purpose="unsubscribe")


def test_link_expires(subject):
    with freeze_time("2026-01-01 12:00"):
        token = links.link_create(subject=subject, purpose="portal", ttl=timedelta(hours=1))
    with freeze_time("2026-01-01 12:59"):
        assert links.link_peek(token, purpose="portal").subject == subject
    with freeze_time("2026-01-01 13:00"), pytest.raises(links.LinkInvalid, match="expired"):
        links.link_use(token, purpose="portal")


def test_revoked_link_is_refused(subject):
    token = links.link_create(subject=subject, purpose="portal", ttl=timedelta(days=7))
    assert links.link_revoke(subject=subject, purpose="portal") == 1
    with pytest.raises(links.LinkInvalid, match="revoked"):
        links.link_use(token, purpose="portal")


def test_single_use_link_is_spent_once(subject):
    token = links.link_create(
        subject=subject, purpose="reply", ttl=timedelta(days=1), single_use=True
    )
    links.link_use(token, purpose="reply")
    with pytest.raises(links.LinkInvalid, match="already used"):
        links.link_use(token, purpose="reply")
