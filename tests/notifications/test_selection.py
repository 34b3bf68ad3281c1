"""Channel selection is a pure function: these tests need no database."""

from __future__ import annotations

from notifications.pipeline.selection import Facts, select_channels

ALL = ["print", "email", "sms", "push"]


def facts(**overrides) -> Facts:
    base = {
        "category": "transactional",
        "urgency": "normal",
        "renditions": ALL,
        "emails": ["ada@example.org"],
        "phones": ["+447700900123"],
        "devices": [],
        "postal_address": ["1 Main St", "Leeds LS1 1AA"],
    }
    return Facts(**{**base, **overrides})


def test_email_first_for_normal_messages():
    chosen = select_channels(facts())
    assert chosen.channels == ["email"]
    assert [t.channel for t in chosen.fallbacks] == ["sms", "print"]


def test_urgent_messages_prefer_sms():
    assert select_channels(facts(urgency="high")).channels == ["sms"]


def test_preferences_are_honoured_for_service_messages():
    chosen = select_channels(facts(category="service", preferences={"email": False}))
    assert chosen.channels == ["sms"]
    assert {
        "channel": "email",
        "eligible": False,
        "reason": ("the customer does not want service messages on this channel"),
    } in chosen.trace


def test_marketing_needs_an_opt_in():
    assert select_channels(facts(category="marketing")).channels == []
    assert select_channels(facts(category="marketing", consents={"sms": True})).channels == ["sms"]


def test_marketing_never_goes_to_a_suppressed_address():
    chosen = select_channels(
        facts(
            category="marketing",
            consents={"email": True},
            suppressed=frozenset({("email", "ada@example.org")}),
        )
    )
    assert chosen.channels == []


def test_regulatory_ignores_opt_outs_and_reaches_a_durable_medium():
    chosen = select_channels(
        facts(
            category="regulatory",
            urgency="high",
            preferences={"email": False, "sms": False},
            consents={"email": False},
        )
    )
    # urgent → SMS first, but a regulatory notice must also reach email or print
    assert chosen.channels == ["sms", "email"]
    assert any(step.get("decision") == "added" for step in chosen.trace)


def test_regulatory_is_never_push_only():
    chosen = select_channels(
        facts(category="regulatory", urgency="high", phones=[], devices=["tok"], emails=[])
    )
    assert chosen.channels == ["push", "print"]


def test_regulatory_without_any_durable_channel_is_undeliverable():
    chosen = select_channels(
        facts(category="regulatory", renditions=["sms"], postal_address=[], emails=[])
    )
    assert chosen.channels == []
    assert chosen.trace[-1]["decision"] == "none"


def test_suppressed_address_falls_to_the_next_channel():
    chosen = select_channels(facts(suppressed=frozenset({("email", "ada@example.org")})))
    assert chosen.channels == ["sms"]


def test_override_comes_first_when_allowed():
    assert select_channels(facts(override="print")).channels == ["print"]


def test_override_that_is_not_allowed_is_refused_with_reason():
    chosen = select_channels(facts(override="push"))
    assert chosen.channels == ["email"]
    assert any(step.get("decision") == "override refused" for step in chosen.trace)
