"""The issue's end-to-end proof, run by `bench/events.py --proof`: 5,000 meter events from 200
devices under one feeder become one incident; every customer under it gets one outage notice
(SMS or push by preference, email when that is all they have), one update and one restoration
confirmation, each counted at the loopback provider that received it; the notice's durable copy
(its archived PDF) exists for every customer; replaying every event changes nothing; an old event
arriving after the resolution does not reopen the incident.

The events go through `POST /api/v1/events` on gunicorn; the clusters do the rest. The three
waves: 4,600 triggers (the notice), 200 `update`s one per meter after the notice went out (the
automatic update, `group_interval` 0), 200 clears (the restoration). Setup (customers, devices,
preferences) is direct, as in the other phases: not measured."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from serve import Client, run_pool

if TYPE_CHECKING:  # imports Django models: only once Django is set up
    from tests.notifications.test_webpush import PushService

FEEDER = "feeder-p"
EVENTS = 5000  # triggers, then one update and one clear per meter
PUSH_APP = "https://app.northwind.example"
PHASES = ("notice", "update", "restoration")


def vapid_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode("ascii")
    )


def prepare(*, devices: int, customers: int, push_url: str) -> dict[str, dict[int, str]]:
    """`devices` meters under FEEDER and `customers` customers spread over them: six in ten
    reachable by SMS, three in ten by push (a phone too, but SMS turned off for service
    messages), one in ten by email only. Returns {channel: {customer id: address}}."""
    from notifications.customers.assets import services as assets
    from notifications.customers.devices import device_register
    from notifications.customers.services import preference_set
    from notifications.models import ContactPoint, Customer

    assets.assets_upsert(
        items=[
            {"code": "south", "kind": "region"},
            {"code": FEEDER, "kind": "feeder", "parent": "south", "name": "Kirkstall 2"},
            *[{"code": f"p{i:03d}", "kind": "meter", "parent": FEEDER} for i in range(devices)],
        ]
    )
    made = Customer.objects.bulk_create(
        [
            Customer(
                external_ref=f"P-{i:05d}", name=f"Customer {i}", postal_address=["1 Row", "LS5"]
            )
            for i in range(customers)
        ],
        batch_size=5000,
    )
    reach: dict[str, dict[int, str]] = {"sms": {}, "push": {}, "email": {}}
    points = []
    for i, customer in enumerate(made):
        channel = "sms" if i % 10 < 6 else "push" if i % 10 < 9 else "email"
        if channel == "email":
            address = f"p{i:05d}@customers.example"
            points.append(
                ContactPoint(customer=customer, kind="email", value=address, is_primary=True)
            )
        else:
            address = f"+44771{i:07d}"
            points.append(
                ContactPoint(customer=customer, kind="phone", value=address, is_primary=True)
            )
        if channel == "push":
            address = f"/push/{customer.external_ref}"
        reach[channel][customer.pk] = address
    ContactPoint.objects.bulk_create(points, batch_size=5000)
    from tests.notifications.conftest import browser_keys

    _, _, keys = browser_keys()
    for customer in made:
        if customer.pk in reach["push"]:
            device_register(
                customer=customer,
                platform="web",
                token=push_url + reach["push"][customer.pk],
                app=PUSH_APP,
                opt_in=True,
                categories=["service"],
                **keys,
            )
            preference_set(customer=customer, category="service", channel="sms", allowed=False)
    assets.service_points_upsert(
        items=[
            {"code": f"psp-{i}", "customer": c.external_ref, "asset": f"p{i % devices:03d}"}
            for i, c in enumerate(made)
        ]
    )
    return reach


def events_of(devices: int, t0: datetime) -> list[list[dict]]:
    """The three waves' events. The updates and clears are stamped when they are sent
    (`_stamped`): after the notice, and after the update."""
    meters = [f"p{i:03d}" for i in range(devices)]

    def one(n: int, meter: str, action: str, at: datetime) -> dict:
        return {
            "source": "proof",
            "event_id": f"{action}-{n}",
            "event_type": "power_outage",
            "severity": "major",
            "asset": meter,
            "occurred_at": at.isoformat(),
            "action": action,
            "payload": {"n": n},
        }

    triggers = [
        one(n, meters[n % devices], "trigger", t0 + timedelta(milliseconds=n))
        for n in range(EVENTS - 2 * devices)
    ]
    updates = [one(n, m, "update", t0) for n, m in enumerate(meters)]
    clears = [one(n, m, "resolve", t0) for n, m in enumerate(meters)]
    return [triggers, updates, clears]


def _stamped(events: list[dict], at: datetime) -> list[dict]:
    return [
        {**e, "occurred_at": (at + timedelta(milliseconds=i)).isoformat()}
        for i, e in enumerate(events)
    ]


def post(client: Client, events: list[dict]) -> Counter[str]:
    """The events 1,000 a call over 4 connections; the results' statuses counted."""

    def call(start: int):
        return client.request("POST", "/api/v1/events", {"events": events[start : start + 1000]})

    statuses: Counter[str] = Counter()
    for response in run_pool(call, range(0, len(events), 1000), connections=4):
        if response.status != 200:
            raise SystemExit(f"refused: {response.status} {response.body[:300]!r}")
        for result in json.loads(response.body)["results"]:
            statuses[result["status"]] += 1
    return statuses


class Ledger:
    """What each customer received, counted at the providers."""

    def __init__(self, reach: dict[str, dict[int, str]], sms, push: PushService, postmark) -> None:
        self.reach, self.sms, self.push, self.postmark = reach, sms, push, postmark

    def counts(self) -> dict[int, int]:
        """Messages received per customer, every channel."""
        from notifications.models import Delivery

        with self.sms.lock:
            by_to = dict(self.sms.by_to)
        by_path = Counter(path for path, _, _ in list(self.push.received))
        by_message_id = self.postmark.state.message_ids()
        email_of = dict(
            Delivery.objects.filter(channel="email", communication__source="incident")
            .exclude(message_id="")
            .values_list("message_id", "communication__customer_id")
        )
        emails: Counter[int] = Counter()
        for message_id, n in by_message_id.items():
            if message_id in email_of:
                emails[email_of[message_id]] += n
        out: dict[int, int] = {}
        for pk, phone in self.reach["sms"].items():
            out[pk] = by_to.get(phone, 0)
        for pk, path in self.reach["push"].items():
            out[pk] = by_path.get(path, 0)
        for pk in self.reach["email"]:
            out[pk] = emails.get(pk, 0)
        return out

    def wait_for(
        self, n: int, timeout_s: float, alive: Callable[[], bool]
    ) -> tuple[float, Counter]:
        """Seconds until every customer has `n` messages (or the timeout); how many customers
        have how many."""
        started = time.perf_counter()
        last_print = 0.0
        while True:
            spread = Counter(self.counts().values())
            elapsed = time.perf_counter() - started
            if spread.get(n, 0) == sum(spread.values()) or elapsed > timeout_s:
                return elapsed, spread
            if not alive():
                raise SystemExit("a cluster died; see its log")
            if elapsed - last_print >= 15:
                print(
                    f"  {elapsed:6.0f} s: customers by messages received {dict(spread)}", flush=True
                )
                last_print = elapsed
            time.sleep(1)


def durable_copies(timeout_s: float) -> tuple[float, int, int]:
    """Seconds until every outage notice has its archived PDF (the render queue works through
    them); (s, notices with their PDF, notices)."""
    from cases.incidents.models import IncidentNotice

    started = time.perf_counter()
    notices = IncidentNotice.objects.filter(update__sequence=1)
    total = notices.count()
    last_print = 0.0
    while True:
        done = notices.filter(communication__document__isnull=False).count()
        elapsed = time.perf_counter() - started
        if done >= total or elapsed > timeout_s:
            return elapsed, done, total
        if elapsed - last_print >= 30:
            print(f"  {elapsed:6.0f} s: {done} of {total} PDFs archived", flush=True)
            last_print = elapsed
        time.sleep(2)


def state() -> dict[str, Any]:
    """What a replay must not change (deliveries are left out: the durable copies add theirs
    meanwhile)."""
    from cases.incidents.models import Event, Incident, IncidentNotice, IncidentUpdate
    from notifications.models import Communication

    return {
        "events": Event.objects.count(),
        "incidents": list(Incident.objects.values_list("reference", "state")),
        "updates": IncidentUpdate.objects.count(),
        "notices": IncidentNotice.objects.count(),
        "communications": Communication.objects.count(),
    }


def run(
    client: Client,
    ledger: Ledger,
    *,
    devices: int,
    timeout_s: float,
    alive: Callable[[], bool],
    durable_timeout_s: float,
) -> str:
    """The proof; returns its summary line (raises SystemExit when a check fails)."""
    from cases.incidents.models import Incident

    customers = sum(len(r) for r in ledger.reach.values())
    failures: list[str] = []
    triggers, updates, clears = events_of(devices, datetime.now(UTC) - timedelta(minutes=5))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    created = post(client, triggers)
    timings["intake"] = time.perf_counter() - started
    incidents = list(Incident.objects.values_list("reference", flat=True))
    if created != Counter(created=len(triggers)) or len(incidents) != 1:
        failures.append(f"triggers: {dict(created)}, incidents {incidents}")
    sent = [triggers]
    for n, (phase, wave) in enumerate(zip(PHASES, (None, updates, clears), strict=True), 1):
        if wave is not None:
            sent.append(_stamped(wave, datetime.now(UTC)))
            post(client, sent[-1])
        elapsed, spread = ledger.wait_for(n, timeout_s, alive)
        timings[phase] = elapsed
        print(f"{phase}: every customer has {n} after {elapsed:.1f} s: {dict(spread)}", flush=True)
        if spread.get(n, 0) != customers:
            failures.append(f"{phase}: customers by messages {dict(spread)}")
    incident = Incident.objects.get()
    if incident.state != "resolved":
        failures.append(f"incident {incident.reference} is {incident.state}, not resolved")
    # Replayed, and a late trigger, while the durable copies still render: neither may add an
    # event, an update, a notice, a communication or a message.
    time.sleep(5)  # the restoration's last hand-over committed
    before, received = state(), ledger.counts()
    replayed = post(client, [e for wave in sent for e in wave])
    late_result = post(client, [{**triggers[-1], "event_id": "late-1"}])  # before the clears
    time.sleep(10)
    after = state()
    after["events"] -= 1  # the late event is stored (once), in the resolved incident
    if replayed != Counter(duplicate=EVENTS):
        failures.append(f"replay: {dict(replayed)}")
    if after != before or ledger.counts() != received:
        failures.append(f"the replay or the late event changed something: {before} → {after}")
    if late_result != Counter(created=1) or Incident.objects.get().state != "resolved":
        failures.append(f"late event: {dict(late_result)}, {Incident.objects.get().state}")
    timings["durable"], archived, notices = durable_copies(durable_timeout_s)
    print(f"durable copies: {archived} of {notices} PDFs archived in {timings['durable']:.0f} s")
    if archived != customers:
        failures.append(f"durable copies: {archived} PDFs for {customers} customers")
    line = (
        f"proof: events={EVENTS} devices={devices} customers={customers} "
        f"(sms={len(ledger.reach['sms'])} push={len(ledger.reach['push'])} "
        f"email={len(ledger.reach['email'])}) incidents=1 intake_s={timings['intake']:.1f} "
        f"notice_s={timings['notice']:.1f} update_s={timings['update']:.1f} "
        f"restoration_s={timings['restoration']:.1f} durable_pdfs={archived}/{customers} "
        f"durable_s={timings['durable']:.0f} replay_duplicates={replayed['duplicate']} "
        f"late_reopened={'no' if Incident.objects.get().state == 'resolved' else 'YES'} "
        f"replay_changed={'no' if after == before else 'YES'} "
        f"failures={len(failures)}"
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    return line
