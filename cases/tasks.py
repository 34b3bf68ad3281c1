"""Case tasks: ids in, re-fetch, safe to run twice; the periodic ones are registered in
CasesConfig.ready()."""

from __future__ import annotations

from django.conf import settings

from cases import alerts, escalation, exception_cases
from ccm.tasks import register_schedule, register_sweep


def case_alert_send(alert_id: int) -> bool:
    return alerts.case_alert_send_run(alert_id)


def exception_settle(case_id: int) -> str:
    return exception_cases.exception_settle(case_id=case_id)


def case_sla_sweep() -> dict[str, int]:
    """Flag and escalate cases whose next deadline is near or past."""
    return escalation.cases_sla_sweep()


def exceptions_reconcile() -> dict[str, int]:
    return exception_cases.exceptions_reconcile()


def erasures_due() -> int:
    """Deferred erasures whose records kept by law have left their retention."""
    from cases import erasure

    return len(erasure.erasures_due_run())


def retention_purge() -> int:
    from cases import retention

    return len(retention.retention_purge_run())


def register() -> None:
    register_schedule(
        "cases.sla_sweep", "cases.tasks.case_sla_sweep", settings.CASES_SLA_SWEEP_MINUTES
    )
    register_schedule("cases.exceptions_reconcile", "cases.tasks.exceptions_reconcile", 5)
    register_schedule("cases.retention_purge", "cases.tasks.retention_purge", 24 * 60)
    register_schedule("cases.erasures_due", "cases.tasks.erasures_due", 24 * 60)
    register_sweep(alerts.UNSENT_SWEEP)
