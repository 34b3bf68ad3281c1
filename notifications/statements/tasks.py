"""Statement run tasks: ids in, safe to run twice (the run's row lock and the one statement per
customer and period see to it)."""

from __future__ import annotations

from django_q.tasks import async_task

from notifications.statements import services


def statement_run_work(run_id: int) -> int:
    return services.statement_run_work(run_id)


def statement_runs_sweep() -> int:
    """Every minute: restart running runs whose task died (a crash mid-run)."""
    stalled = services.runs_stalled()
    for pk in stalled:
        async_task(services.WORK_TASK, pk)
    return len(stalled)
