"""Every page works for every role, in Chromium, on the demo data (`make run`'s).

Signs in through /login/ as each demo user and crawls from their home page (tests/browser/
crawl.py): every same-origin link, GET only, to a bounded depth and page count, with a sample of
each kind of page (two change pages per model, two filtered lists per list...). Any page that
answers 4xx/5xx — including a link to a page the role may not open —, throws a JavaScript error,
is wider than 1440 px or has a serious or critical axe-core violation fails the test. The
portal is crawled too, from a customer's link, signed out.

Figures (pages per role, axe violations by impact) are printed (`pytest -s`) and written to
var/reports/crawl.json.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser

from ccm import approvals
from ccm.demo import DEMO_PASSWORD, seed_all
from ccm.models import Approval, ApprovalState
from documents.models import TemplateVersion
from notifications.channels import portal
from notifications.models import CommState, Communication, Customer
from tests.browser.crawl import VIEWPORT_WIDTH, Crawler, CrawlResult, axe_source

ROLES = ["reviewer", "author", "agent", "ops", "integrator", "admin"]
# CCM_CRAWL_ROLES=agent,ops crawls only those (to look into one role's pages quickly).
ROLES = [r for r in os.environ.get("CCM_CRAWL_ROLES", ",".join(ROLES)).split(",") if r]
# Bounds that keep the whole crawl within a few minutes on a loaded 2-core machine: the admin
# (a superuser) reaches every screen; the other roles prove theirs and their links.
MAX_PAGES = {"admin": 130, "author": 30}
DEFAULT_MAX_PAGES = 20
MAX_DEPTH = 6
REPORT = Path(__file__).resolve().parents[2] / "var" / "reports" / "crawl.json"


@pytest.fixture
def axe() -> str:
    source = axe_source()
    if source is None:
        message = "axe-core is not installed: run `make test-js-deps` (npm install into var/node)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return source


@pytest.fixture
def demo(settings, sync_tasks):
    """`make run`'s demo data, every task run, and the held renewal released so that the
    portal has a document with an action."""
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    sync_tasks(seed_all)
    reviewer2 = approvals_user("reviewer2")
    for approval in Approval.objects.filter(state=ApprovalState.PENDING):
        sync_tasks(approvals.approval_decide, approval=approval, by=reviewer2, decision="approve")


def approvals_user(username: str):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username=username)


def _sign_in(context, base_url: str, username: str) -> None:
    page = context.new_page()
    page.goto(base_url + "/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base_url + "/")
    page.close()


def _report(results: list[CrawlResult], seconds: float) -> dict:
    by_impact: Counter = Counter()
    for result in results:
        by_impact.update(result.violations)
    report = {
        "seconds": round(seconds, 1),
        "pages_per_role": {r.role: len(r.visited) for r in results},
        "files_per_role": {r.role: len(r.files) for r in results},
        "axe_violations_by_impact": dict(by_impact),
        "problems": [
            {"role": r.role, "url": p.url, "kind": p.kind, "detail": p.detail}
            for r in results
            for p in r.problems
        ],
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2))
    print(f"\ncrawl: {seconds:.0f} s, pages per role {report['pages_per_role']}")
    print(f"crawl: files per role {report['files_per_role']}")
    print(f"crawl: axe violations by impact (all pages) {report['axe_violations_by_impact']}")
    return report


def _back_office_pages(username: str) -> list[str]:
    """The customer screens, started from directly so that the page bound never leaves them
    out: the list, a customer's page (a demo customer with letters), and what agents and
    operations do from there (open a case, correct the address)."""
    customer = Customer.objects.filter(communications__isnull=False).order_by("pk").first()
    assert customer is not None
    pages = {
        "reviewer": ["/customers/", f"/customers/{customer.pk}/"],
        "agent": [
            "/customers/",
            f"/customers/{customer.pk}/",
            f"/cases/new/?customer={customer.pk}",
            f"/customers/{customer.pk}/address/",
        ],
    }
    pages["ops"] = pages["agent"]
    return pages.get(username, [])


def test_every_page_reachable_by_every_role_works(browser: Browser, live_server, demo, axe):
    started = time.monotonic()
    crawler = Crawler(live_server.url, axe, max_pages=DEFAULT_MAX_PAGES, max_depth=MAX_DEPTH)
    # The author also starts in the template editor: each template's page is a shape of its
    # own (its code), so from the home page alone the editor is past the page budget.
    version = TemplateVersion.objects.order_by("pk").first()
    assert version is not None
    # The recommendation rules are started from too, so that a version's page (one of each
    # shape) is inside the page bound of the roles that read them.
    rules = "/statements/rules/"
    starts = {
        "author": [f"/templates/versions/{version.pk}/", "/templates/", rules, "/"],
        "reviewer": [rules, "/"],
        "ops": [rules, "/"],
    }
    results = []
    for username in ROLES:
        crawler.max_pages = MAX_PAGES.get(username, DEFAULT_MAX_PAGES)
        context = browser.new_context(
            viewport={"width": VIEWPORT_WIDTH, "height": 900}, bypass_csp=True
        )
        context.set_default_timeout(20_000)
        _sign_in(context, live_server.url, username)
        starting = starts.get(username, ["/"])
        results.append(crawler.crawl(context, username, [*starting, *_back_office_pages(username)]))
        context.close()

    # the portal, as the customer who got the renewal offer opens it
    renewal = Communication.objects.filter(
        template__code="policy_renewal", state__in=[CommState.SENT, CommState.DELIVERED]
    ).first()
    assert renewal is not None
    link = urlsplit(portal.portal_url(renewal)).path
    context = browser.new_context(
        viewport={"width": VIEWPORT_WIDTH, "height": 900}, bypass_csp=True
    )
    crawler.max_pages = 20
    dead = "/p/not-a-live-link/"  # answers the generic page with 404, on purpose
    results.append(crawler.crawl(context, "customer", [link, dead], expected={dead: 404}))
    context.close()

    report = _report(results, time.monotonic() - started)
    for result in results:
        assert len(result.visited) >= 3, (result.role, result.visited)
    assert report["problems"] == []
    # the template editor and the notices are in the author's reach
    for result in results:
        if result.role == "author":
            paths = {urlsplit(url).path for url in result.visited}
            assert {"/templates/", "/notices/"} <= paths, sorted(paths)
            assert any(p.startswith("/templates/versions/") for p in paths), sorted(paths)
        # the recommendation rules (the demo publishes a version) and a version's page
        if result.role in ("author", "reviewer", "ops"):
            paths = {urlsplit(url).path for url in result.visited}
            assert "/statements/rules/" in paths, (result.role, sorted(paths))
            assert any(re.fullmatch(r"/statements/rules/\d+/", p) for p in paths), sorted(paths)
