"""A template author's day in Chromium: a new template written in the browser, an error shown
at its line, fixed, previewed (the PDF too), submitted; a reviewer approves; the author is told
(in the app, and by mail) and publishes after confirming."""

from __future__ import annotations

from django.core import mail
from playwright.sync_api import Browser, Page, expect

from documents.models import TemplateVersion
from tests.browser.conftest import PASSWORD, TIMEOUT_MS

BROKEN = "<h1>Dear {{ customer.name }}</h1>\n<p>Your rate is {{ rate | percent }}.</p>\n"
FIXED = "<h1>Dear {{ customer.name }}</h1>\n<p>Your new rate applies from May.</p>\n"


def _signed_in(browser: Browser, base_url: str, user) -> Page:
    context = browser.new_context(base_url=base_url, viewport={"width": 1366, "height": 768})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/login/")
    page.get_by_label("Username").fill(user.get_username())
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Welcome")
    return page


def test_author_writes_submits_is_told_and_publishes(
    page: Page, login, browser: Browser, live_server, author, reviewer, sync_tasks
):
    author.email = "alex@example.org"
    author.save()
    # given the author starts a template from the home page
    login(author)
    page.get_by_role("link", name="Templates", exact=True).first.click()
    page.get_by_role("link", name="New template").click()
    page.get_by_label("Name").fill("Rate change notice")
    page.get_by_label("Code").fill("rate-change")
    page.get_by_label("Service").check()
    page.get_by_label("Print").check()
    page.get_by_label("Email").check()
    page.get_by_role("button", name="Create the template and its first draft").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Rate change notice v1")
    # when they write a line that cannot compose and preview it
    page.get_by_label("print.html").fill(BROKEN)
    page.get_by_role("button", name="Preview every channel").click()
    # then the error is shown at its line: in the summary, beside line 2, under the box
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("print.html, line 2")
    expect(alert).to_contain_text("'rate' is undefined")
    expect(page.locator("#f-print-html").locator("xpath=..").locator(".gutter .bad")).to_have_text(
        "! 2"
    )
    expect(page.get_by_label("print.html")).to_have_attribute("aria-invalid", "true")
    # and what they typed is still there to fix
    expect(page.get_by_label("print.html")).to_have_value(BROKEN)
    # when they fix it, preview every channel and save
    page.get_by_label("print.html").fill(FIXED)
    page.get_by_role("button", name="Preview every channel").click()
    expect(page.get_by_role("alert")).to_have_count(0)
    frame = page.locator("iframe[title='PDF proof']")
    proof = page.request.get(frame.get_attribute("src") or "")
    assert proof.headers["content-type"] == "application/pdf"
    assert proof.body().startswith(b"%PDF")
    expect(page.get_by_text("Subject: A message for Ada Lovelace")).to_be_visible()
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft v1 saved.")
    # and submit it for sign-off
    page.get_by_role("button", name="Submit v1 for sign-off").click()
    expect(page.get_by_role("status")).to_contain_text("v1 submitted for sign-off")
    expect(page.get_by_role("row").filter(has_text="v1")).to_contain_text("In review")

    # when a reviewer opens it from their queue and approves it
    review = _signed_in(browser, live_server.url, reviewer)
    review.get_by_role("link", name="Sign-off queue").first.click()
    review.get_by_role("link", name="Rate change notice v1 (rate-change)").click()
    review.get_by_role("radio", name="Approve").check()
    review.get_by_role("button", name="Record decision").click()
    expect(review.get_by_role("status")).to_contain_text("Approved")
    review.context.close()

    # then the author sees a notice counted in the navigation, and the mail went out
    page.goto("/")
    notices_link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Notices")
    expect(notices_link).to_contain_text("1 unread")
    (sent,) = [m for m in mail.outbox if m.to == ["alex@example.org"]]
    assert sent.subject == "Approved: Rate change notice v1 (rate-change)"
    notices_link.click()
    expect(
        page.get_by_role("heading", level=2, name="Approved: Rate change notice v1")
    ).to_be_visible()
    # and publishes from there, after confirming
    page.get_by_role("button", name="Open and publish").click()
    page.get_by_role("link", name="Publish v1").click()
    expect(page.get_by_text("This cannot be undone")).to_be_visible()
    page.get_by_role("button", name="Yes, publish v1").click()
    expect(page.get_by_role("status")).to_contain_text("Rate change notice v1 is published.")
    assert TemplateVersion.objects.get(template__code="rate-change").state == "published"
    expect(notices_link).not_to_contain_text("unread")
