"""Render benchmark: the project's composition path against raw WeasyPrint loops.

    .venv/bin/python bench/render.py               # 200 monthly statements
    .venv/bin/python bench/render.py --docs 2000   # also RSS at 200 and at 2000 documents

The project path is `documents.services.document_compose`: schema validation, Jinja rendering,
PDF in the limited render worker (parsed CSS and fonts reused, the static terms insert laid out once
per version), archive to storage, SHA-256, audit. The raw loops render the same documents (letter
plus terms as one HTML) with WeasyPrint directly: naive (`HTML(string=…).write_pdf()` with a fresh
stylesheet each time) and tuned (stylesheet and font configuration reused).

Last line:
render: project=<docs/s> tuned=<docs/s> naive=<docs/s> vs_tuned=<ratio> scale2=<ratio> rss_mb=<peak>
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def setup_django(workdir: Path) -> None:
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{workdir / 'bench.sqlite3'}")
    os.environ["MEDIA_ROOT"] = str(workdir / "media")
    os.environ["DJANGO_SETTINGS_MODULE"] = "ccm.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def prepare(workdir: Path) -> None:
    """Migrate the throwaway database and publish the demo library (once per run)."""
    setup_django(workdir)
    from django.core.management import call_command

    from ccm.demo import seed_users
    from documents.demo import seed_library

    call_command("migrate", verbosity=0)
    seed_users()
    seed_library()


def statements(n: int, sample: dict, *, seed: int = 7) -> list[dict]:
    """n distinct statements derived from the sample: other names, usage and amounts."""
    rng = random.Random(seed)
    first = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia"]
    last = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
    out = []
    for i in range(n):
        data = copy.deepcopy(sample)
        data["customer"]["name"] = f"{rng.choice(first)} {rng.choice(last)}"
        data["reference"] = f"ST-{i:07d}"

        def jiggle(node):
            if isinstance(node, dict):
                return {k: jiggle(v) for k, v in node.items()}
            if isinstance(node, list):
                return [jiggle(v) for v in node]
            if isinstance(node, float):
                return round(node * rng.uniform(0.8, 1.2), 2)
            return node

        data["usage"] = jiggle(data["usage"])
        out.append(data)
    return out


def rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pids() -> list[int]:
    from documents import sandbox

    return sandbox.worker_pids()


def total_rss() -> float:
    return rss_mb() + sum(rss_mb(pid) for pid in worker_pids())


def total_hwm() -> float:
    return hwm_mb() + sum(hwm_mb(pid) for pid in worker_pids())


def run_project(
    docs: list[dict], *, rss_at: tuple[int, ...] = ()
) -> tuple[float, dict[int, float]]:
    from documents import services
    from documents.models import Template

    version = Template.objects.get(code="monthly_statement").published_version
    services.document_compose(version=version, data=docs[0])  # warm: worker, caches
    rss: dict[int, float] = {}
    started = time.perf_counter()
    for i, data in enumerate(docs, start=1):
        services.document_compose(version=version, data=data)
        if i in rss_at:
            rss[i] = total_rss()
    return len(docs) / (time.perf_counter() - started), rss


def raw_inputs(docs: list[dict]):
    """The same documents as one HTML each (letter + static terms), for the raw loops."""
    from documents import services
    from documents.composition import PRINT_DRAWING, composer_for
    from documents.models import Template

    version = Template.objects.get(code="monthly_statement").published_version
    language = version.meta["languages"][0]
    sources = services.version_sources(version, language)
    composer = composer_for(sources, locale="en_GB")
    statics = "".join(
        f'<section style="break-before: page">{html}</section>'
        for html in sources.static_sections.values()
    )
    # Charts drawn as the project path draws them, so the loops compare like with like.
    pages = [
        composer.print_html(d, drawing=PRINT_DRAWING).replace("</body>", statics + "</body>")
        for d in docs
    ]
    css = sources.page.css() + "\n" + sources.print_css
    return pages, css, sources.assets


def run_raw(docs: list[dict], *, tuned: bool) -> float:
    import weasyprint
    from weasyprint.text.fonts import FontConfiguration

    from documents.rendering import SafeURLFetcher

    pages, css_text, assets = raw_inputs(docs)
    fetcher = SafeURLFetcher(assets=assets)
    font_config = FontConfiguration()
    css = weasyprint.CSS(string=css_text, font_config=font_config, url_fetcher=fetcher)

    def render(html: str) -> bytes:
        if tuned:
            return weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf(
                stylesheets=[css], font_config=font_config
            )
        fresh = FontConfiguration()
        sheet = weasyprint.CSS(string=css_text, font_config=fresh, url_fetcher=fetcher)
        return weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf(
            stylesheets=[sheet], font_config=fresh
        )

    render(pages[0])
    started = time.perf_counter()
    for html in pages:
        render(html)
    return len(pages) / (time.perf_counter() - started)


def child_main(args) -> None:
    """One process of the scaling run: warm up, wait for the common start, render, report."""
    setup_django(Path(args.workdir))
    from documents.models import Template

    sample = Template.objects.get(code="monthly_statement").published_version.content["samples"]
    docs = statements(args.docs, sample["default"], seed=args.seed)
    from documents import services

    version = Template.objects.get(code="monthly_statement").published_version
    services.document_compose(version=version, data=docs[0])
    while time.time() < args.start_at:
        time.sleep(0.005)
    for data in docs:
        services.document_compose(version=version, data=data)
    print(json.dumps({"end": time.time()}))


def run_processes(workdir: Path, *, processes: int, docs: int) -> float:
    start_at = time.time() + 12  # time for every child to start Django and its render worker
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                "--workdir",
                str(workdir),
                "--docs",
                str(docs),
                "--seed",
                str(100 + i),
                "--start-at",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        for i in range(processes)
    ]
    ends = []
    for child in children:
        out, _ = child.communicate(timeout=1800)
        if child.returncode != 0:
            raise SystemExit(f"scaling child failed with {child.returncode}")
        ends.append(json.loads(out.strip().splitlines()[-1])["end"])
    if time.time() < start_at:
        raise SystemExit("children finished before the start signal; raise the start delay")
    return processes * docs / (max(ends) - start_at)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=200, help="documents per measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=7, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="ccm-bench-render-"))
    prepare(workdir)
    import weasyprint

    from documents.models import Template
    from documents.rendering import engine_info

    info = engine_info()
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"WeasyPrint {weasyprint.__version__}, HarfBuzz subsetting: {info.get('harfbuzz_subset')}"
    )
    sample = Template.objects.get(code="monthly_statement").published_version.content["samples"]
    base_n = min(args.docs, 200)
    docs = statements(args.docs, sample["default"])

    rss_points = (base_n, args.docs) if args.docs > base_n else (base_n,)
    project, rss = run_project(docs, rss_at=rss_points)
    print(f"project path (1 process): {project:.2f} docs/s over {len(docs)} documents")
    for n, value in rss.items():
        print(f"  RSS after {n} documents (process + render worker): {value:.0f} MB")
    raw_docs = docs[:base_n]
    tuned = run_raw(raw_docs, tuned=True)
    print(f"raw WeasyPrint, tuned (stylesheet + fonts reused): {tuned:.2f} docs/s")
    naive = run_raw(raw_docs, tuned=False)
    print(f"raw WeasyPrint, naive (fresh stylesheet each time): {naive:.2f} docs/s")
    peak = total_hwm()

    from documents.sandbox import shutdown_workers

    shutdown_workers()
    per_child = max(20, base_n // 2)
    one = run_processes(workdir, processes=1, docs=per_child)
    two = run_processes(workdir, processes=2, docs=per_child)
    print(f"project path, 1 process: {one:.2f} docs/s; 2 processes: {two:.2f} docs/s")

    vs_tuned = project / tuned
    scale2 = two / one
    print(f"project / tuned = {vs_tuned:.2f} (target >= 0.9)")
    print(f"project / naive = {project / naive:.2f}")
    print(f"2 processes / 1 = {scale2:.2f} (target >= 1.8)")
    if len(rss) == 2:
        growth = rss[args.docs] / rss[base_n]
        print(f"RSS {args.docs} / RSS {base_n} = {growth:.2f} (target <= 1.2)")
    print(
        f"render: project={project:.2f} tuned={tuned:.2f} naive={naive:.2f} "
        f"vs_tuned={vs_tuned:.2f} scale2={scale2:.2f} rss_mb={peak:.0f}"
    )


if __name__ == "__main__":
    main()
