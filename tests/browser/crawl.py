"""A bounded crawler for the browser tests: from a start page, follow every same-origin link
breadth-first (GET only) and check every page it reaches in real Chromium.

A page fails when it answers 4xx/5xx, throws an uncaught JavaScript error or logs a console
error, is wider than the 1440 px viewport, or has an axe-core violation of impact serious or
critical. Links that would sign out or change something are never followed; pages that differ
only by an id or a query (change pages, filters, sort orders) are sampled, SAMPLE_PER_SHAPE of
each shape.
"""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

from playwright.sync_api import BrowserContext, Error, Page

VIEWPORT_WIDTH = 1440
SAMPLE_PER_SHAPE = 2
BLOCKING_IMPACTS = ("serious", "critical")
# Never followed: signing out, and links whose GET would do something (admin actions, deletes).
SKIP = re.compile(r"/logout/|[?&]action=|/delete/|/admin/r/|/api/schema/")
# Third-party screens CCM serves but does not write (Swagger UI): checked for errors and width,
# not held to axe (their markup is not ours to fix).
THIRD_PARTY = re.compile(r"^/api/docs/")
FILE_TYPES = ("application/pdf", "text/csv", "application/octet-stream")

_AXE_RUN = """async () => {
  // preload: false: axe's own fetch of @import-ed stylesheets resolves them against the page
  // (a 404 for admin/css/widgets.css on every form) instead of the stylesheet.
  const result = await axe.run(document, {resultTypes: ['violations'], preload: false});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length,
    target: v.nodes.slice(0, 3).map(n => n.target.join(' ')),
  }));
}"""


@dataclass
class Problem:
    url: str
    kind: str  # status | js | width | axe
    detail: str


@dataclass
class CrawlResult:
    role: str
    visited: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    violations: Counter = field(default_factory=Counter)  # impact → count (every impact)
    found_on: dict[str, str] = field(default_factory=dict)  # url → the page linking to it
    seconds: float = 0.0


def shape(path_and_query: str) -> str:
    """What pages of one kind share: the path with ids replaced, and whether it has a query.
    Admin history pages are one template whatever the model (tests/notifications/
    test_admin_pages.py opens every one), so they are one shape."""
    parts = urlsplit(path_and_query)
    generic = re.sub(r"\d+", "N", parts.path)
    generic = re.sub(r"/[A-Z]{2,5}-N-N/", "/REF/", generic)  # case references
    generic = re.sub(r"^/admin/\w+/\w+/N/history/$", "/admin/*/history/", generic)
    return generic + ("?query" if parts.query else "")


class Crawler:
    def __init__(self, base_url: str, axe_source: str, *, max_pages: int, max_depth: int):
        self.base = base_url.rstrip("/")
        self.axe_source = axe_source
        self.max_pages = max_pages
        self.max_depth = max_depth
        # A page axe has checked once (for any role) is not checked again.
        self.axe_checked: set[str] = set()

    def _local(self, href: str, current: str) -> str | None:
        absolute, _ = urldefrag(urljoin(current, href))
        parts = urlsplit(absolute)
        if parts.scheme not in ("http", "https") or f"{parts.scheme}://{parts.netloc}" != self.base:
            return None
        local = parts.path + (f"?{parts.query}" if parts.query else "")
        return None if SKIP.search(local) else local

    def crawl(
        self,
        context: BrowserContext,
        role: str,
        starts: list[str],
        *,
        expected: dict[str, int] | None = None,
    ) -> CrawlResult:
        """Crawl from `starts`; `expected` names start pages whose status is not 200 on
        purpose (a dead portal link answers 404)."""
        result = CrawlResult(role=role)
        self.expected = expected or {}
        started = time.monotonic()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        page.on(
            "console",
            lambda msg: (
                errors.append(f"console: {msg.text} ({msg.location.get('url')})")
                if msg.type == "error"
                else None
            ),
        )
        queue: deque[tuple[str, int]] = deque((start, 0) for start in starts)
        seen: set[str] = set(starts)
        shapes: Counter = Counter()
        while queue and len(result.visited) < self.max_pages:
            url, depth = queue.popleft()
            errors.clear()
            links = self._visit(context, page, url, result, errors)
            if depth >= self.max_depth:
                continue
            for href in links:
                local = self._local(href, self.base + url)
                if local is None or local in seen:
                    continue
                seen.add(local)
                result.found_on[local] = url
                # Filtered and sorted lists: one of each (their page is the list's template).
                limit = 1 if shape(local).endswith("?query") else SAMPLE_PER_SHAPE
                if shapes[shape(local)] >= limit:
                    continue
                shapes[shape(local)] += 1
                queue.append((local, depth + 1))
        page.close()
        result.seconds = time.monotonic() - started
        return result

    def _visit(
        self, context: BrowserContext, page: Page, url: str, result: CrawlResult, errors: list
    ) -> list[str]:
        try:
            response = page.goto(self.base + url, wait_until="load")
        except Error as exc:
            if "Download is starting" not in str(exc):
                result.problems.append(Problem(url, "status", f"did not load: {exc}"))
                return []
            # A file (PDF, CSV): only its status matters.
            answer = context.request.get(self.base + url)
            result.files.append(url)
            if answer.status >= 400:
                linked = result.found_on.get(url, "(start)")
                result.problems.append(
                    Problem(url, "status", f"HTTP {answer.status}, linked from {linked}")
                )
            return []
        result.visited.append(url)
        status = response.status if response is not None else 0
        if status >= 400 and self.expected.get(url) != status:
            linked = result.found_on.get(url, "(start)")
            result.problems.append(Problem(url, "status", f"HTTP {status}, linked from {linked}"))
        content_type = (response.headers.get("content-type", "") if response else "").lower()
        if content_type.startswith(FILE_TYPES) or not content_type.startswith("text/html"):
            result.files.append(url)
            return []
        width = page.evaluate("() => document.documentElement.scrollWidth")
        if width > VIEWPORT_WIDTH:
            result.problems.append(Problem(url, "width", f"{width}px wide at {VIEWPORT_WIDTH}px"))
        # One page of each shape is enough for axe: pages of a shape share their template.
        path = urlsplit(url).path
        if shape(path) not in self.axe_checked and not THIRD_PARTY.search(path):
            self.axe_checked.add(shape(path))
            page.add_script_tag(content=self.axe_source)
            for violation in page.evaluate(_AXE_RUN):
                impact = violation["impact"] or "minor"
                result.violations[impact] += 1
                if impact in BLOCKING_IMPACTS:
                    result.problems.append(
                        Problem(
                            url,
                            "axe",
                            f"{impact} {violation['id']}: {violation['help']} "
                            f"({violation['nodes']} nodes, e.g. {violation['target']})",
                        )
                    )
        for error in errors:
            if self.expected.get(url) == status and f"({self.base + url})" in error:
                continue  # the browser's note that the page itself answered as expected
            result.problems.append(Problem(url, "js", error))
        return page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")


def axe_source() -> str | None:
    """axe.min.js as `make test-js-deps` installs it (var/node), or None."""
    root = Path(__file__).resolve().parents[2]
    path = root / "var" / "node" / "node_modules" / "axe-core" / "axe.min.js"
    return path.read_text() if path.exists() else None
