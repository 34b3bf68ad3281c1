"""Validation of a meter's readings for a billing period, before anything is billed.

Every interval of the period must have a value. What is wrong is either estimated (and marked
so on the statement) when the rule allows, or makes the customer held for review with the
reason — never silently estimated:

- negative or impossible consumption (above the meter's `max_interval_value`): held;
- a spike above `CCM_READING_SPIKE_MULTIPLE` times the meter's usual value for that time of
  day (the median of the same half-hour over the period and the four weeks before): held;
- a gap (no reading, or one marked missing) of at most `CCM_READING_ESTIMATE_MAX_INTERVALS`
  intervals in a row is estimated from the usual profile; longer gaps, or more than
  `CCM_READING_ESTIMATE_MAX_SHARE` of the period estimated, hold the customer;
- a register that goes backwards from near its top has rolled over: the consumption counts
  through zero and the statement says so; one that goes backwards otherwise is held."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings

from notifications.statements.billing import MILLI
from notifications.statements.models import Quality

PROFILE_DAYS = 28


@dataclass(frozen=True)
class Rules:
    spike_multiple: Decimal = Decimal(10)
    # A spike needs to be above this too: 10 x 0.01 kWh is still nothing.
    spike_floor: Decimal = Decimal("0.5")
    estimate_max_intervals: int = 6
    estimate_max_share: Decimal = Decimal("0.1")

    @classmethod
    def from_settings(cls) -> Rules:
        return cls(
            spike_multiple=Decimal(str(getattr(settings, "CCM_READING_SPIKE_MULTIPLE", 10))),
            estimate_max_intervals=int(getattr(settings, "CCM_READING_ESTIMATE_MAX_INTERVALS", 6)),
            estimate_max_share=Decimal(
                str(getattr(settings, "CCM_READING_ESTIMATE_MAX_SHARE", "0.1"))
            ),
        )


@dataclass
class Checked:
    """The period's series (every interval, estimates filled in) or why it cannot be billed."""

    values: list[Decimal] = field(default_factory=list)
    estimated: list[int] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.held)


def _slot(moment: datetime, zone: ZoneInfo) -> tuple[int, int]:
    local = moment.astimezone(zone)
    return local.hour, local.minute


def usual_profile(
    readings: Sequence[tuple[datetime, Decimal | None, str]], zone: ZoneInfo
) -> dict[tuple[int, int], Decimal]:
    """The median actual value per local time of day."""
    by_slot: dict[tuple[int, int], list[Decimal]] = defaultdict(list)
    for moment, value, quality in readings:
        if value is not None and value >= 0 and quality != Quality.MISSING:
            by_slot[_slot(moment, zone)].append(value)
    return {slot: statistics.median(values) for slot, values in by_slot.items()}


def _when(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def interval_series_check(
    *,
    starts: Sequence[datetime],
    readings: dict[datetime, tuple[Decimal | None, str]],
    profile: dict[tuple[int, int], Decimal],
    max_value: Decimal,
    zone: ZoneInfo,
    rules: Rules,
) -> Checked:
    """Check the period's intervals (`starts`) against the readings found for them."""
    checked = Checked()
    gap: list[int] = []

    def close_gap() -> None:
        if not gap:
            return
        if len(gap) > rules.estimate_max_intervals:
            checked.held.append(
                f"gap: {len(gap)} intervals without a reading from {_when(starts[gap[0]], zone)}"
            )
        else:
            for index in gap:
                usual = profile.get(_slot(starts[index], zone), Decimal(0))
                checked.values[index] = usual.quantize(MILLI)
                checked.estimated.append(index)
        gap.clear()

    for index, moment in enumerate(starts):
        value, quality = readings.get(moment, (None, Quality.MISSING))
        checked.values.append(Decimal(0))
        if value is None or quality == Quality.MISSING:
            gap.append(index)
            continue
        close_gap()
        checked.values[index] = value
        if quality == Quality.ESTIMATED:
            checked.estimated.append(index)
        if value < 0:
            checked.held.append(f"negative: {value} at {_when(moment, zone)}")
        elif value > max_value:
            checked.held.append(f"impossible: {value} at {_when(moment, zone)}")
        else:
            usual = profile.get(_slot(moment, zone))
            if usual is not None and value > max(usual * rules.spike_multiple, rules.spike_floor):
                checked.held.append(
                    f"spike: {value} at {_when(moment, zone)} "
                    f"(usual {usual.quantize(MILLI)}, limit x{rules.spike_multiple})"
                )
    close_gap()
    checked.estimated.sort()
    if starts and not checked.held:
        share = Decimal(len(checked.estimated)) / Decimal(len(starts))
        if share > rules.estimate_max_share:
            checked.held.append(
                f"too many estimates: {len(checked.estimated)} of {len(starts)} intervals"
            )
    if checked.estimated:
        checked.flags.append(f"estimated: {len(checked.estimated)} intervals")
    return checked


def register_consumption(
    *, opening: Decimal | None, closing: Decimal | None, digits: int
) -> tuple[Decimal | None, list[str], list[str]]:
    """Consumption between two register reads: (consumption, flags, held reasons)."""
    if opening is None or closing is None:
        missing = "opening" if opening is None else "closing"
        return None, [], [f"gap: no {missing} register read"]
    if closing >= opening:
        return closing - opening, [], []
    top = Decimal(10) ** digits
    # Backwards from the last tenth of the dial: the register went through zero.
    if opening >= top * Decimal("0.9"):
        return closing + top - opening, [f"rollover: register passed {top - 1}"], []
    return None, [], [f"negative: register went back from {opening} to {closing}"]


def period_starts(first: datetime, end: datetime, minutes: int) -> list[datetime]:
    """The interval starts in [first, end)."""
    step = timedelta(minutes=minutes)
    out, moment = [], first
    while moment < end:
        out.append(moment)
        moment += step
    return out
