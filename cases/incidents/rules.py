"""Grouping rules, one per event type (Alertmanager's `group_by`, `group_wait`,
`group_interval` and a repeat limit), with the templates and urgency of its notices.

Kept in code, reviewed like code; a deployment tunes the timings with CCM_INCIDENT_RULES
({"power_outage": {"group_wait": 60}}) without touching what a notice says."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class Rule:
    event_type: str
    title: str
    group_by: str  # the asset kind whose subtree one incident covers (an ancestor of the device)
    service: str  # what the customer is without: the notice templates' `outage.service`
    notice_template: str
    update_template: str
    resolution_template: str
    urgency: str = "normal"  # high: selection tries SMS / push first
    category: str = "service"
    group_wait: int = 120  # seconds from the first event to the first notice
    group_interval: int = 1800  # seconds between automatic updates
    repeat_limit: int = 3  # automatic updates at most (operators can always send one)
    reason: str = "of a fault on the local network"
    restore_hours: int = 4  # the first estimate of when supply is back


RULES: dict[str, Rule] = {
    rule.event_type: rule
    for rule in [
        Rule(
            event_type="power_outage",
            title="Power outage",
            group_by="feeder",
            service="electricity",
            notice_template="outage_notice",
            update_template="outage_update",
            resolution_template="outage_restored",
            urgency="high",
        ),
        Rule(
            event_type="gas_pressure_loss",
            title="Gas supply interruption",
            group_by="main",
            service="gas",
            notice_template="outage_notice",
            update_template="outage_update",
            resolution_template="outage_restored",
            urgency="high",
            reason="of a loss of pressure on the gas main that supplies your street",
        ),
    ]
}


# Planned maintenance is scheduled, not grouped from events: no event type reaches it.
PLANNED = Rule(
    event_type="planned_maintenance",
    title="Planned maintenance",
    group_by="",
    service="electricity",
    notice_template="planned_maintenance",  # the notice and the reminder
    update_template="outage_notice",  # the start: a planned interruption under way
    resolution_template="outage_restored",  # the completion
    urgency="normal",  # routine: email or print by preference
)


def incident_rule(incident) -> Rule:
    """The rule an incident speaks by: its event type's, or planned maintenance's."""
    if incident.kind == "planned":
        return dataclasses.replace(PLANNED, service=incident.service or PLANNED.service)
    rule = rule_for(incident.event_type)
    assert rule is not None  # checked at intake
    return rule


def rule_for(event_type: str) -> Rule | None:
    rule = RULES.get(event_type)
    if rule is None:
        return None
    overrides = getattr(settings, "CCM_INCIDENT_RULES", {}).get(event_type) or {}
    return dataclasses.replace(rule, **overrides) if overrides else rule
