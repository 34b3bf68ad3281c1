"""Which Authentication-Results header counts: only the receiving server's, topmost."""

from __future__ import annotations

from notifications.channels import mailauth


def test_only_the_topmost_header_of_our_receiving_server_counts(settings):
    settings.CCM_INBOUND_AUTHSERV_ID = "mx.google.com"
    # given the sender wrote a passing header under our server's name, below the real one
    headers = [
        "mx.google.com; spf=neutral smtp.mailfrom=evil.example; dkim=none; dmarc=none",
        "mx.google.com; dkim=pass header.d=northwind.example; dmarc=pass",
    ]
    sender = mailauth.authenticated_sender(
        from_values=["rita@northwind.example"], authentication_results=headers
    )
    assert sender.address is None
    assert "dkim=none" in sender.reason


def test_comments_and_quotes_do_not_hide_or_fake_a_result(settings):
    settings.CCM_INBOUND_AUTHSERV_ID = "mx.google.com"
    results = mailauth.trusted_results(
        ['mx.google.com 1; dkim=fail (dkim=pass; header.d=x.example) header.d="x.example"']
    )
    assert [(r.method, r.result, r.properties) for r in results] == [
        ("dkim", "fail", {"header.d": "x.example"})
    ]
