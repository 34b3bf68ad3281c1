"""Who really sent an inbound mail: a strict From and the receiving server's verdict.

Anyone can write any From and any `Authentication-Results` header into a mail. What can be
trusted is the one header the receiving server (Gmail, for the shared mailbox) stamps with its
own authserv-id (RFC 8601) above everything the sender wrote: the topmost header carrying
`settings.CCM_INBOUND_AUTHSERV_ID`. A sender counts as authenticated when that header says DMARC
passed for the From domain, or a DKIM signature of the From domain (or its parent or a subdomain)
passed. SPF alone never counts: it vouches for the envelope, not for the From a person reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address, HeaderRegistry

from django.conf import settings

_REGISTRY = HeaderRegistry()


@dataclass(frozen=True)
class AuthResult:
    """One `method=result` of an Authentication-Results header, with its properties."""

    method: str
    result: str
    properties: dict[str, str]


@dataclass(frozen=True)
class Sender:
    """The From address when it is one plain address the receiving server vouched for, else
    None and the reason it is not."""

    address: str | None
    reason: str = ""

    @property
    def domain(self) -> str:
        return (self.address or "").rpartition("@")[2]


def strict_from(values: Sequence[str]) -> Sender:
    """Exactly one From header holding exactly one address, with no address in its display
    name (`reviewer@bank.example <mallory@evil.example>` shows one address and sends from
    another) and nothing the parser had to guess at."""
    if len(values) != 1:
        return Sender(None, f"the mail has {len(values)} From headers, not one")
    header = _REGISTRY("from", values[0])
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    if header.defects or len(addresses) != 1:
        return Sender(None, f"the From header is not one plain address: {values[0]!r}"[:300])
    address = addresses[0]
    local, _, domain = address.addr_spec.rpartition("@")
    if not local or not domain or "@" in address.display_name:
        return Sender(None, f"the From header is not one plain address: {values[0]!r}"[:300])
    return Sender(address.addr_spec.lower())


def trusted_results(values: Sequence[str], *, authserv_id: str | None = None) -> list[AuthResult]:
    """The results of the topmost Authentication-Results header stamped by our receiving
    server; [] when it stamped none (a header from anyone else is not evidence)."""
    ours = (authserv_id or settings.CCM_INBOUND_AUTHSERV_ID).lower()
    for value in values:
        segments = _segments(value)
        if segments and segments[0].split()[0].lower() == ours:
            return [result for s in segments[1:] if (result := _result(s)) is not None]
    return []


def authenticated_sender(
    *, from_values: Sequence[str], authentication_results: Sequence[str]
) -> Sender:
    """The From address if the receiving server found DMARC, or DKIM aligned with the From
    domain, passing; else None and the reason (what the server found, or that it found
    nothing)."""
    sender = strict_from(from_values)
    if sender.address is None:
        return sender
    results = trusted_results(authentication_results)
    if not results:
        return Sender(
            None,
            f"no Authentication-Results from the receiving server "
            f"({settings.CCM_INBOUND_AUTHSERV_ID})",
        )
    domain = sender.domain
    for result in results:
        if result.method == "dmarc" and result.result == "pass":
            header_from = result.properties.get("header.from", domain).lower()
            if header_from == domain:
                return sender
        if result.method == "dkim" and result.result == "pass":
            signer = (
                result.properties.get("header.d")
                or result.properties.get("header.i", "").rpartition("@")[2]
            )
            if _aligned(signer.lower(), domain):
                return sender
    found = "; ".join(f"{r.method}={r.result}" for r in results)
    return Sender(
        None,
        f"sender authentication did not pass for {domain} (neither DMARC nor aligned "
        f"DKIM): {found}"[:300],
    )


def _aligned(signer: str, domain: str) -> bool:
    # Relaxed alignment without a public-suffix list: the same domain, or one inside the other.
    return bool(signer) and (
        signer == domain or domain.endswith(f".{signer}") or signer.endswith(f".{domain}")
    )


def _segments(value: str) -> list[str]:
    """Split on ";" outside quoted strings, dropping (comments), which may nest."""
    segments: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in " ".join(value.split()):
        if escaped:
            escaped = False
            if depth == 0:
                current.append(char)
        elif char == "\\":
            escaped = True
        elif quoted:
            if char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif depth:
            continue
        elif char == '"':
            quoted = True
        elif char == ";":
            segments.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    segments.append("".join(current).strip())
    return [segment for segment in segments if segment]


def _result(segment: str) -> AuthResult | None:
    words = segment.split()
    method, equals, result = words[0].partition("=")
    if not equals:
        return None  # "none", or a token we do not read
    properties: dict[str, str] = {}
    for word in words[1:]:
        name, equals, value = word.partition("=")
        if equals and "." in name:
            properties.setdefault(name.lower(), value)
    return AuthResult(method.split("/")[0].lower(), result.lower(), properties)
