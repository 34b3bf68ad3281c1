"""Statement runs end to end on PostgreSQL: computed from readings, bad reads held with the
reason, handed to the one intake once per customer and period, resumable, reprinted exactly."""

from __future__ import annotations

import hashlib
import io
from datetime import date
from decimal import Decimal

import pypdf
import pytest
from django.db import IntegrityError, transaction

from ccm.models import AuditEvent
from documents.models import RegenerationCheck
from notifications.customers import services as customer_services
from notifications.models import Communication
from notifications.statements import selectors, services
from notifications.statements.models import RunState, Statement, StatementState
from tests.statements.conftest import half_hours, load, make_meter, make_tariff, put_on

JAN = (date(2026, 1, 1), date(2026, 1, 31))


def _customer(ref, ops, tariff, *, value="0.5", hole=None):
    customer_services.customer_upsert(
        external_ref=ref,
        name=f"Customer {ref}",
        emails=[f"{ref.lower()}@example.org"],
        postal_address=["1 Mill Lane", "Leeds LS6 3QT"],
        by=ops,
    )
    meter = make_meter(ref)
    put_on(meter.service_point.customer, tariff)
    rows = half_hours(date(2025, 12, 1), 62, value, serial=meter.serial)
    if hole:
        del rows[hole[0] : hole[1]]
    load(rows)
    return meter


@pytest.fixture
def town(db, ops, usage_statement):
    flat = make_tariff("flat")
    good = _customer("GOOD", ops, flat)
    # Two half-hours missing on 10 January: estimated from the usual profile, and marked.
    short = _customer("SHORT", ops, flat, hole=(31 * 48 + 9 * 48 + 20, 31 * 48 + 9 * 48 + 22))
    # A day missing: held for review, not silently estimated.
    long = _customer("LONG", ops, flat, hole=(31 * 48 + 14 * 48, 31 * 48 + 15 * 48))
    spike = _customer("SPIKE", ops, flat)
    load([{"meter": spike.serial, "start": "2026-01-20T03:00:00+00:00", "value": "40"}])
    return {"good": good, "short": short, "long": long, "spike": spike}


def _run(sync_tasks, ops):
    run = services.statement_run_create(period_start=JAN[0], period_end=JAN[1], by=ops)
    sync_tasks(services.statement_run_start, run=run, by=ops)
    run.refresh_from_db()
    return run


def _statement(meter):
    return Statement.objects.get(customer=meter.service_point.customer)


def test_a_run_computes_holds_and_hands_each_customer_once(town, ops, sync_tasks):
    # when a run for January covers everyone with readings
    run = _run(sync_tasks, ops)
    # then it completes with two statements handed and two held, each with its reason
    assert run.state == RunState.COMPLETED
    assert selectors.run_counts(run) == {"held": 2, "computed": 0, "handed": 2, "skipped": 0}
    assert _statement(town["long"]).reason == (
        "gap: 48 intervals without a reading from 2026-01-15 00:00"
    )
    assert _statement(town["spike"]).reason.startswith("spike: 40.000 at 2026-01-20 03:00")
    # the good customer's bill: 31 x 24 kWh = 744 kWh x 0.2450 = 182.28; 31 x 0.50 = 15.50;
    # VAT 9.11 + 0.78 = 9.89 (per line)
    good = _statement(town["good"])
    assert (good.result["net"], good.result["vat"], good.result["total"]) == (
        "197.78",
        "9.89",
        "207.67",
    )
    assert good.total == Decimal("207.67")
    assert good.data["comparison"]["previous"] == "744.000"  # December, same length
    # the short gap was estimated at the usual 0.5 and is marked on the statement
    short = _statement(town["short"])
    assert short.state == StatementState.HANDED
    assert short.data["estimated"] == {"intervals": 2, "days": ["2026-01-10"]}
    # one communication per handed statement, from the statement run, through the one intake
    comms = Communication.objects.filter(source="statement_run")
    assert sorted(comms.values_list("customer__external_ref", flat=True)) == ["GOOD", "SHORT"]
    report = selectors.run_report(run)
    assert report["total_billed"] == str(good.total + short.total)
    assert [t["tariff"] for t in report["by_tariff"]] == ["flat"]
    assert report["by_tariff"][0]["statements"] == 2
    assert {h["customer"] for h in report["held"]} == {"LONG", "SPIKE"}


def test_never_two_statements_for_one_customer_and_period(town, ops, sync_tasks):
    first = _run(sync_tasks, ops)
    # a second run for the same period finds nobody left to bill
    second = _run(sync_tasks, ops)
    assert second.state == RunState.COMPLETED
    assert second.statements.count() == 0
    assert Statement.objects.count() == 4
    assert Communication.objects.filter(source="statement_run").count() == 2
    # and the database refuses a second statement outright
    statement = first.statements.first()
    with pytest.raises(IntegrityError), transaction.atomic():
        Statement.objects.create(
            run=second,
            customer=statement.customer,
            period_start=JAN[0],
            period_end=JAN[1],
            state=StatementState.HELD,
        )


def test_a_crash_mid_chunk_leaves_nothing_and_the_run_resumes(town, ops, sync_tasks, monkeypatch):
    run = services.statement_run_create(period_start=JAN[0], period_end=JAN[1], by=ops)
    real = services._hand

    def crash(*args, **kwargs):
        raise RuntimeError("worker killed")

    monkeypatch.setattr(services, "_hand", crash)
    with pytest.raises(RuntimeError):
        services.statement_run_start(run=run, by=ops)
        services.statement_run_chunk(run.pk)
    assert Statement.objects.count() == 0
    monkeypatch.setattr(services, "_hand", real)
    # the sweep (or the next task) picks the run up again
    sync_tasks(services.statement_run_work, run.pk)
    run.refresh_from_db()
    assert run.state == RunState.COMPLETED
    assert Statement.objects.count() == 4
    assert Communication.objects.filter(source="statement_run").count() == 2


def test_pause_stops_the_next_chunk_and_resume_finishes(town, ops, sync_tasks):
    run = services.statement_run_create(period_start=JAN[0], period_end=JAN[1], by=ops)
    with transaction.atomic():
        run = services.statement_run_start(run=run, by=ops)
        run = services.statement_run_pause(run=run, by=ops)
    assert services.statement_run_chunk(run.pk).more is False
    assert Statement.objects.count() == 0
    sync_tasks(services.statement_run_resume, run=run, by=ops)
    run.refresh_from_db()
    assert run.state == RunState.COMPLETED
    assert run.statements.count() == 4


def test_a_held_statement_is_released_once_the_reads_are_fixed(town, ops, sync_tasks):
    _run(sync_tasks, ops)
    held = _statement(town["spike"])
    load([{"meter": town["spike"].serial, "start": "2026-01-20T03:00:00+00:00", "value": "0.5"}])
    released = sync_tasks(services.statement_release, statement=held, by=ops)
    assert released.state == StatementState.HANDED
    assert released.communication is not None


def test_a_reprint_is_byte_identical_to_the_archived_statement(town, ops, sync_tasks):
    _run(sync_tasks, ops)
    statement = _statement(town["good"])
    statement.communication.refresh_from_db()
    original = statement.communication.document
    assert original is not None
    text = "".join(
        p.extract_text() for p in pypdf.PdfReader(io.BytesIO(original.file.read())).pages
    )
    assert "£207.67" in text
    assert "Page 1 of" in text
    copy = services.statement_reprint(statement=statement, by=ops)
    check = RegenerationCheck.objects.get(document=original)
    assert check.matched
    assert check.actual_sha256 == original.sha256
    assert copy.original == original


def _reprint_by_an_agent(sync_tasks, statement, agent):
    from cases.requests import reprints

    statement.communication.refresh_from_db()
    request = sync_tasks(
        reprints.reprint_request_create,
        customer=statement.customer,
        document=statement.communication.document,
        reason="Lost in the post",
        channel="email",
        identity_verification="security_questions",
        by=agent,
    )
    request.refresh_from_db()
    return request


def test_a_service_agent_reprints_a_statement_with_its_bill_recomputed(
    town, ops, agent, sync_tasks
):
    # given January's run, and the good customer's statement
    _run(sync_tasks, ops)
    statement = _statement(town["good"])
    # when an agent files a reprint of it, as of any document (the reprint form, API, inbox)
    request = _reprint_by_an_agent(sync_tasks, statement, agent)
    # then the copy is sent, regenerated byte for byte from the archive
    assert request.state == "fulfilled", request.failure_reason
    assert request.regeneration_check.matched
    assert request.duplicate.original == statement.communication.document


def test_a_statement_whose_bill_no_longer_recomputes_is_not_reprinted(town, ops, agent, sync_tasks):
    # given a statement whose stored bill its stored readings no longer give (a total edited
    # in the database, or a billing engine that changed what it computes)
    _run(sync_tasks, ops)
    statement = _statement(town["good"])
    Statement.objects.filter(pk=statement.pk).update(result={**statement.result, "total": "1.00"})
    # when an agent files a reprint of it
    request = _reprint_by_an_agent(sync_tasks, statement, agent)
    # then no copy is made or sent, and the request says why
    assert request.state == "failed"
    assert request.failure_reason == (
        f"the bill was not reproduced: statement {statement.pk}: its stored readings no "
        "longer give its stored bill (differs in total)"
    )
    assert request.duplicate is None
    assert not Communication.objects.filter(source="reprint").exists()
    # and operations have an exception case about the statement's document, saying what to do
    from cases.models import Case

    case = Case.objects.get(exception_kind="bill_mismatch")
    assert case.customer == statement.customer
    assert case.description == request.failure_reason.removeprefix("the bill was not reproduced: ")
    assert "before anyone reprints it" in case.next_action
    assert list(case.document_links.values_list("document", flat=True)) == [
        statement.communication.document_id
    ]
    # and the statement's own reprint refuses it the same way, the alarm raised again
    statement.refresh_from_db()
    with pytest.raises(services.ReprintMismatch, match="differs in total"):
        services.statement_reprint(statement=statement, by=ops)
    case.refresh_from_db()
    assert case.occurrences == 2
    assert AuditEvent.objects.filter(action="statement.bill_mismatch").count() == 2


def test_a_statement_archived_before_chart_drawings_reprints_as_it_was(town, ops, sync_tasks):
    from django.core.files.base import ContentFile

    from documents.rendering import engine_info
    from documents.sandbox import render_pdf
    from documents.services import version_sources

    # given a statement archived before drawings were recorded: its charts inline SVG (drawing
    # 1, what CCM rendered then) and no drawing in its engine info
    _run(sync_tasks, ops)
    statement = _statement(town["good"])
    statement.communication.refresh_from_db()
    document = statement.communication.document
    sources = version_sources(document.template_version, document.language)
    rendered = {
        drawing: render_pdf(
            sources=sources, locale=document.locale, data=document.data, drawing=drawing
        ).data
        for drawing in (1, 2)
    }
    assert rendered[1] != rendered[2]
    document.file.save("before.pdf", ContentFile(rendered[1]), save=False)
    document.sha256 = hashlib.sha256(rendered[1]).hexdigest()
    document.engine = engine_info()
    document.save()

    # when it is reprinted
    copy = services.statement_reprint(statement=statement, by=ops)

    # then its charts are drawn as they were: the same bytes, and the duplicate says so
    check = RegenerationCheck.objects.get(document=document)
    assert check.matched
    assert check.actual_sha256 == hashlib.sha256(rendered[1]).hexdigest()
    assert copy.engine["drawing"] == 1


def test_a_statement_run_shows_on_the_dashboard_as_a_progress_bar(town, ops, sync_tasks):
    from notifications.progress import work_in_progress

    # when a run for January has finished
    run = _run(sync_tasks, ops)
    # then the operations dashboard's progress list has its bar: every customer handled,
    # linking to the run and reconcilable by its reference
    [bar] = [w for w in work_in_progress() if w["key"] == f"statement_run:{run.pk}"]
    assert (bar["kind"], bar["done"], bar["total"], bar["finished"]) == (
        "statement_run",
        4,
        4,
        True,
    )
    assert bar["percent"] == 100.0
    assert bar["url"] == f"/statements/{run.pk}/"
    assert bar["reference"] == f"statement-run:{run.pk}"


def test_a_viewer_who_may_not_open_a_run_sees_its_bar_without_a_link(
    town, ops, sync_tasks, make_user
):
    from notifications.progress import work_in_progress

    run = _run(sync_tasks, ops)
    outsider = make_user("outsider")
    [bar] = [w for w in work_in_progress(user=outsider) if w["key"] == f"statement_run:{run.pk}"]
    assert bar["url"] == ""
    [bar] = [w for w in work_in_progress(user=ops) if w["key"] == f"statement_run:{run.pk}"]
    assert bar["url"] == f"/statements/{run.pk}/"


def test_a_run_keeps_no_sql_text_from_chunk_to_chunk_with_debug_on(town, ops, sync_tasks, settings):
    # given DEBUG on (a development cluster), where Django logs every statement's SQL
    from django.db import connection

    settings.DEBUG = True
    run = services.statement_run_create(period_start=JAN[0], period_end=JAN[1], by=ops)
    run.start(when=run.created_at)
    run.save()
    # when the task works the whole run in one process (as a cluster worker does)
    services.statement_run_work(run.pk)
    # then the chunks' inserts (each carrying its statements' inputs) are not kept: memory
    # stays flat over a run of any length
    kept = len(connection.queries_log)
    assert selectors.run_counts(run)["held"] == 2
    assert kept == 0


@pytest.fixture
def dual_fuel(db, ops, usage_statement):
    """GOOD's electricity meter on the flat tariff, and a gas meter on its own gas tariff."""
    from notifications.statements.models import CustomerTariff, Meter

    electricity = _customer("GOOD", ops, make_tariff("flat"))
    gas = Meter.objects.create(serial="G-GOOD", service_point=electricity.service_point, unit="m3")
    gas_tariff = make_tariff(
        "gas", bands=(("all day", "00:00", "00:00", "0.0700"),), standing_charge=Decimal("0.30")
    )
    CustomerTariff.objects.create(
        customer=electricity.service_point.customer,
        meter=gas,
        tariff=gas_tariff,
        valid_from=date(2024, 1, 1),
    )
    load(half_hours(date(2025, 12, 1), 62, "0.25", serial=gas.serial))
    return electricity, gas


def test_a_customer_with_two_meters_gets_one_statement_with_each_and_the_total(
    dual_fuel, ops, sync_tasks
):
    # when a run covers a customer with an electricity and a gas meter
    run = _run(sync_tasks, ops)
    statement = Statement.objects.get()
    assert selectors.run_counts(run)["handed"] == 1
    # then each meter is billed on its own tariff. Electricity as GOOD above: 744 kWh x
    # 0.2450 = 182.28 + 31 x 0.50 = 15.50: net 197.78, VAT 9.11 + 0.78 = 9.89, total 207.67.
    # Gas: 31 x 48 x 0.25 = 372 m³ x 0.0700 = 26.04 + 31 x 0.30 = 9.30: net 35.34,
    # VAT 1.302 → 1.30 and 0.465 → 0.47 = 1.77, total 37.11.
    electricity, gas = statement.data["meters"]
    assert (electricity["meter"]["serial"], electricity["total"]) == ("E-GOOD", "207.67")
    assert (gas["meter"]["serial"], gas["meter"]["unit"], gas["consumption"]) == (
        "G-GOOD",
        "m3",
        "372.000",
    )
    assert (gas["net"], gas["vat"], gas["total"]) == ("35.34", "1.77", "37.11")
    # the statement's totals are the sums: net 233.12, VAT 11.66, total 244.78
    assert (statement.data["net"], statement.data["vat"], statement.data["total"]) == (
        "233.12",
        "11.66",
        "244.78",
    )
    assert statement.total == Decimal("244.78")
    report = selectors.run_report(run)
    assert sorted(t["tariff"] for t in report["by_tariff"]) == ["flat", "gas"]
    # and the archived PDF lists both meters, their use and the total
    document = statement.communication.document
    text = "\n".join(
        page.extract_text() for page in pypdf.PdfReader(io.BytesIO(document.file.read())).pages
    )
    for expected in ["Your meters", "E-GOOD", "G-GOOD", "744.0 kWh", "372.0 m³", "£244.78"]:
        assert expected in text, expected
