"""Browser tests: Debian's headless Chromium (never a downloaded browser) driven by Playwright's
sync API against pytest-django's live server, signed in through the real /login/ form.

Every test under tests/browser is marked `browser` (`pytest -m "not browser"` leaves them out).
Without a chromium binary they fail when CI is set, because there a missing browser is a broken
machine, not a choice; elsewhere they skip and say how to install it. `make test` installs
chromium first (test-system-deps), so there they always run.

The live server makes these tests transactional (TransactionTestCase semantics: rows are
committed, and the database is flushed after each test); django-q runs tasks synchronously
(`Conf.SYNC`) in whichever thread commits, the test's or the live server's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django_q.conf import Conf
from django_q.models import Task
from playwright.sync_api import Browser, Page, expect, sync_playwright

HERE = Path(__file__).parent
PASSWORD = "pw-for-tests"  # what tests/conftest.py make_user gives every user
TIMEOUT_MS = 15_000


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.browser)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    # One Chromium for every browser test (each test gets a fresh context: its own cookies,
    # storage and pages), closed when the last test of tests/browser is done.
    chromium = shutil.which("chromium")
    if chromium is None:
        _unavailable("no chromium on PATH: run `make test-system-deps` (apt-get install chromium)")
    # Playwright's sync API keeps an asyncio loop running in this thread while it is started, so
    # Django refuses ORM calls from the test itself (SynchronousOnlyOperation) though nothing
    # here is async: the test thread only ever blocks on one thing at a time, and the live
    # server answers in its own thread. Allowed for exactly as long as Playwright runs.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=chromium, headless=True)
            yield launched
            launched.close()


@pytest.fixture
def page(browser: Browser, live_server) -> Iterator[Page]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1366, "height": 768})
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def login(page: Page) -> Callable[[object], None]:
    """Sign `user` in through the login form, as a person would."""

    def sign_in(user) -> None:
        page.goto("/login/")
        page.get_by_label("Username").fill(user.get_username())  # type: ignore[attr-defined]
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Welcome")

    return sign_in


@pytest.fixture
def sync_tasks(monkeypatch) -> Callable:
    """Run enqueued tasks at once, in the thread that commits (the test's or the live
    server's). Transactional tests commit for real, so on_commit fires by itself."""
    monkeypatch.setattr(Conf, "SYNC", True)

    def run(fn, *args, **kwargs):
        result = fn(*args, **kwargs)
        # django-q records a failing task instead of raising: surface it here.
        failed = list(Task.objects.filter(success=False).values_list("func", "result"))
        assert failed == [], failed
        return result

    return run
