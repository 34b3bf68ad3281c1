"""Text composition benchmark: SMS per second in-process against the bounded render worker.

    .venv/bin/python bench/compose_text.py               # 2,000 SMS, 3 rounds
    .venv/bin/python bench/compose_text.py --n 5000

Every text rendition is composed in the render worker under time and memory limits
(documents/sandbox.py); the pipeline sends a chunk as one job. This measures what that costs
against composing in the calling process (unbounded, what the pipeline did before), for one SMS
per job (a preview) and a chunk of 500 per job (the pipeline). No database is needed.

Last line:
compose_text: inprocess=<sms/s> worker_chunk=<sms/s> worker_single=<sms/s> chunk_ratio=<ratio>
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMS = (
    "Northwind: {{ customer.name }}, your balance is {{ balance | money('GBP') }} on "
    "{{ as_of | date }}. Reply STOP to opt out."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="SMS per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="best of (default 3)")
    args = parser.parse_args()

    from documents.composition import Sources, compose_text_channels, composer_for
    from documents.rendering import Limits
    from documents.sandbox import compose_text

    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")
    sources = Sources(sms_text=SMS)
    items = [
        {"customer": {"name": f"Ada {i}"}, "balance": 1234.5 + i, "as_of": "2026-03-01"}
        for i in range(args.n)
    ]
    limits = Limits(timeout_s=10, memory_mb=256)

    def inprocess() -> None:
        composer = composer_for(sources, locale="en_GB")
        for data in items:
            compose_text_channels(composer, data, ["sms"])

    def worker(per_job: int) -> None:
        for start in range(0, len(items), per_job):
            chunk = items[start : start + per_job]
            results = compose_text(
                sources=sources,
                locale="en_GB",
                items=[(data, ["sms"]) for data in chunk],
                limits=limits,
            )
            assert all(isinstance(r, dict) for r in results), results[:1]

    def rate(run) -> float:
        best = float("inf")
        for _ in range(args.rounds):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        return args.n / best

    worker(1)  # start the worker and warm its caches
    inprocess()
    figures = {
        "inprocess": rate(inprocess),
        "worker_chunk": rate(lambda: worker(500)),
        "worker_single": rate(lambda: worker(1)),
    }
    for name, value in figures.items():
        print(f"{name}: {value:,.0f} SMS/s ({1e6 / value:.0f} µs each)")
    ratio = figures["worker_chunk"] / figures["inprocess"]
    print(
        "compose_text: "
        + " ".join(f"{k}={v:.0f}" for k, v in figures.items())
        + f" chunk_ratio={ratio:.2f}"
    )


if __name__ == "__main__":
    main()
