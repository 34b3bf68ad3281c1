"""Channel selection: a pure function of what is known about the customer and the message.

It takes plain values (no database), returns the channels to use in order, and says why for
every channel it considered — the decision trace stored on the communication.

Rules:
- a channel needs a rendition in the template and a valid, unsuppressed address;
- marketing needs a recorded opt-in for the channel and no opt-out preference, and never goes
  to a suppressed address;
- transactional and service messages honour the customer's channel preferences;
- regulatory notices ignore marketing opt-outs and channel preferences only order the choice:
  they always reach a durable medium (email carrying the document, portal link, or print), and
  push is never their only channel;
- urgent messages prefer the fast channels; a channel override comes first when it is allowed;
- an urgent message that reaches a fast channel does not wait for its durable copy: the PDF and
  the durable targets (email carrying it, print) follow once the fast channel has gone
  (`durable_later`); which channels are chosen does not change, only when each one goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from notifications.customers.services import postal_address_text

EMAIL, SMS, PUSH, PRINT = "email", "sms", "push", "print"
DURABLE = {EMAIL, PRINT}
FAST = {SMS, PUSH}
DURABLE_LATER = "durable later"  # the trace's decision: the PDF and durable targets follow
ORDER_NORMAL = [EMAIL, SMS, PUSH, PRINT]
ORDER_URGENT = [SMS, PUSH, EMAIL, PRINT]


@dataclass(frozen=True)
class Target:
    channel: str
    address: str


@dataclass(frozen=True)
class Facts:
    """Everything selection looks at, as plain values."""

    category: str
    urgency: str
    renditions: Sequence[str]
    emails: Sequence[str] = ()  # valid addresses, primary first
    phones: Sequence[str] = ()  # valid E.164 numbers, primary first
    devices: Sequence[str] = ()  # active devices as "device:<id>", most recently seen first
    postal_address: Sequence[str] = ()  # empty when unknown or invalid
    preferences: Mapping[str, bool] = field(default_factory=dict)  # channel → allowed
    consents: Mapping[str, bool] = field(default_factory=dict)  # channel → latest opt-in/out
    suppressed: frozenset[tuple[str, str]] = frozenset()
    override: str = ""


@dataclass(frozen=True)
class Selection:
    targets: list[Target]  # what to send now, in order
    fallbacks: list[Target]  # eligible but not chosen, in order
    trace: list[dict]

    @property
    def channels(self) -> list[str]:
        return [t.channel for t in self.targets]


def _addresses(facts: Facts, channel: str) -> Sequence[str]:
    if channel == EMAIL:
        return facts.emails
    if channel == SMS:
        return facts.phones
    if channel == PUSH:
        return facts.devices
    address = postal_address_text(facts.postal_address)
    return [address] if address else []


def check_channel(facts: Facts, channel: str) -> tuple[Target | None, str]:
    """Can `channel` be used, and on which address? Returns (target, reason)."""
    if channel not in facts.renditions:
        return None, "the template has no rendition for this channel"
    addresses = list(_addresses(facts, channel))
    if not addresses:
        return None, {
            EMAIL: "no valid email address",
            SMS: "no valid mobile number",
            PUSH: "no active device",
            PRINT: "no valid postal address",
        }[channel]
    usable = [a for a in addresses if (channel, a) not in facts.suppressed]
    if not usable:
        return None, "every address on this channel is suppressed"
    refusal = consent_refusal(
        category=facts.category,
        consent=facts.consents.get(channel),
        preference=facts.preferences.get(channel),
    )
    if refusal:
        return None, refusal
    return Target(channel, usable[0]), "eligible"


def consent_refusal(*, category: str, consent: bool | None, preference: bool | None) -> str:
    """Why the customer's consent or preference on a channel forbids this category there ("" if
    it does not): checked when channels are chosen and again when each message is sent."""
    if category == "marketing":
        if consent is not True:
            return "marketing needs an opt-in on this channel; none is recorded"
        if preference is False:
            return "the customer opted out of marketing on this channel"
    elif category != "regulatory" and preference is False:
        return f"the customer does not want {category} messages on this channel"
    return ""


def select_channels(facts: Facts) -> Selection:
    order = ORDER_URGENT if facts.urgency == "high" else ORDER_NORMAL
    if facts.category == "regulatory":
        # The customer's preferred durable channel comes first.
        preferred = [c for c in order if facts.preferences.get(c) is True]
        order = preferred + [c for c in order if c not in preferred]
    if facts.override:
        order = [facts.override] + [c for c in order if c != facts.override]
    trace: list[dict] = []
    eligible: list[Target] = []
    for channel in order:
        target, reason = check_channel(facts, channel)
        trace.append({"channel": channel, "eligible": target is not None, "reason": reason})
        if target is not None:
            eligible.append(target)
    if facts.override and not any(t.channel == facts.override for t in eligible):
        trace.append(
            {
                "channel": facts.override,
                "decision": "override refused",
                "reason": trace[0]["reason"],
            }
        )
    targets = eligible[:1]
    if facts.category == "regulatory" and not any(t.channel in DURABLE for t in targets):
        durable = next((t for t in eligible if t.channel in DURABLE), None)
        if durable is not None:
            targets.append(durable)
            trace.append(
                {
                    "channel": durable.channel,
                    "decision": "added",
                    "reason": "a regulatory notice must reach a durable medium",
                }
            )
        else:
            targets = []
            trace.append(
                {
                    "decision": "none",
                    "reason": "no durable channel (email, print) can reach the customer",
                }
            )
    for target in targets:
        trace.append({"channel": target.channel, "decision": "chosen", "address": target.address})
    fallbacks = [t for t in eligible if t not in targets]
    if not targets:
        trace.append({"decision": "none", "reason": "no channel can reach the customer"})
    return Selection(targets=targets, fallbacks=fallbacks, trace=trace)


def durable_later(chosen: Selection, *, urgency: str) -> Selection | None:
    """The same choice with the durable targets deferred, for an urgent message with a fast
    target (SMS, push): those go now, the PDF and the durable targets are composed after.
    None when nothing is deferred (not urgent, or no fast target: everything goes together)."""
    if urgency != "high" or not any(t.channel in FAST for t in chosen.targets):
        return None
    later = [t for t in chosen.targets if t.channel not in FAST]
    trace = [
        {**entry, "decision": "deferred"}
        if entry.get("decision") == "chosen" and entry.get("channel") not in FAST
        else entry
        for entry in chosen.trace
    ]
    trace.append(
        {
            "decision": DURABLE_LATER,
            "channels": [t.channel for t in later],
            "reason": "urgent: the fast channels go first, the durable copy is composed after",
        }
    )
    return Selection(
        targets=[t for t in chosen.targets if t.channel in FAST],
        fallbacks=chosen.fallbacks,
        trace=trace,
    )


def durable_pending(trace: Sequence[Mapping]) -> bool:
    """Whether a communication's durable copy is still to be composed (see `durable_later`)."""
    return any(entry.get("decision") == DURABLE_LATER for entry in trace)
