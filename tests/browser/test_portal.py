"""The customer portal in Chromium: open the document, accept the renewal, ask for a fresh link.

Chromium is what found the portal's 403s: the portal sends `Referrer-Policy: no-referrer`, so
Chromium posts its forms with `Origin: null`, which Django's CSRF check refuses (its test client
sends no Origin at all). These tests post exactly as the browser does.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.conf import settings
from playwright.sync_api import Page, Request, expect

from ccm import links
from ccm.models import AuditEvent
from documents import bundle as bundles
from documents.demo import LIBRARY
from notifications.channels import portal
from notifications.models import CommState, Communication
from tests.documents.factories import letter_bundle
from tests.notifications import conftest as notifications_fixtures
from tests.notifications.test_portal import ACCEPT, _communication, _publish

customer = notifications_fixtures.customer


@pytest.fixture
def document_ready(author, reviewer):
    bundle = bundles.read_folder(LIBRARY / "document_ready")
    return _publish(bundle, name="Your document is ready", author=author, reviewer=reviewer)


@pytest.fixture
def offer(author, reviewer, customer):
    bundle = letter_bundle("renewal_offer", name="Renewal offer", requires_action=ACCEPT)
    version = _publish(bundle, name="Renewal offer", author=author, reviewer=reviewer)
    return _communication(version, customer)


def _posts(page: Page) -> list[Request]:
    posts: list[Request] = []
    page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
    return posts


def test_customer_opens_the_document_and_accepts_it(page: Page, offer):
    path = urlsplit(portal.portal_url(offer)).path
    posts = _posts(page)

    # when the customer opens their link
    page.goto(path)

    # then they see their document, and the view is recorded
    expect(page.get_by_role("heading", level=1)).to_have_text("Renewal offer")
    expect(page.get_by_text("For Ada Lovelace")).to_be_visible()
    expect(page.locator("iframe.portal-pdf")).to_have_attribute("title", "Renewal offer")
    offer.refresh_from_db()
    assert offer.state == CommState.VIEWED

    # when they accept
    page.get_by_role("button", name="Accept your renewal").click()

    # then the page says so and the acceptance is recorded with their browser
    expect(page.get_by_role("status")).to_contain_text("Accept your renewal: already done on")
    assert [p.headers.get("origin") for p in posts] == ["null"]  # what no-referrer gives
    offer.refresh_from_db()
    assert offer.state == CommState.ACTIONED
    event = AuditEvent.objects.get(action="communication.actioned")
    assert "HeadlessChrome" in event.after["user_agent"]
    assert event.after["ip"] == "127.0.0.1"


def test_customer_with_a_dead_link_asks_for_a_fresh_one(page: Page, offer, document_ready):
    # given a link that was revoked
    path = urlsplit(portal.portal_url(offer)).path
    links.link_revoke(subject=offer, purpose=portal.PURPOSE)
    posts = _posts(page)

    # when the customer opens it and asks for a fresh link
    page.goto(path)
    expect(page.get_by_role("heading", level=1)).to_have_text("This link does not work")
    page.get_by_role("button", name="Send me a fresh link").click()

    # then they are told it is on its way, and a renewal carrying a new link was requested
    expect(page.get_by_role("heading", level=1)).to_have_text("Request received")
    assert [p.headers.get("origin") for p in posts] == ["null"]
    renewal = Communication.objects.get(parent=offer)
    assert renewal.template.code == "document_ready"
    assert renewal.data["portal_url"].startswith(settings.CCM_PUBLIC_BASE_URL)
    fresh = urlsplit(renewal.data["portal_url"]).path
    page.goto(fresh)
    expect(page.get_by_role("heading", level=1)).to_have_text("Renewal offer")


PHONE = {"width": 390, "height": 844}


@pytest.fixture
def renewal(author, reviewer, customer):
    """The library's policy renewal: house style, and it asks the customer to accept it."""
    from documents import services as documents
    from notifications.models import CommState

    bundle = bundles.read_folder(LIBRARY / "policy_renewal")
    version = _publish(
        bundle, name="Home insurance renewal invitation", author=author, reviewer=reviewer
    )
    data = bundle.samples["default"]
    document = documents.document_compose(version=version, data=data, language="en")
    return Communication.objects.create(
        customer=customer,
        template=version.template,
        template_version=version,
        data=data,
        category="transactional",
        client="test",
        state=CommState.SENT,
        document=document,
    )


def test_on_a_phone_the_document_comes_before_the_action_in_the_brands_colours(
    browser, live_server, renewal
):
    # given a phone
    context = browser.new_context(
        base_url=live_server.url, viewport=PHONE, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    try:
        # when the customer opens their link
        page.goto(urlsplit(portal.portal_url(renewal)).path)

        # then the first page of the letter is shown, drawn, above the button
        picture = page.get_by_role(
            "img", name="The first page of Home insurance renewal invitation"
        )
        expect(picture).to_be_visible()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth === 1000", arg=picture.element_handle()
        )
        button = page.get_by_role("button", name="Accept your renewal")
        expect(button).to_be_visible()
        picture_box, button_box = picture.bounding_box(), button.bounding_box()
        assert picture_box["y"] + picture_box["height"] <= button_box["y"]
        assert picture_box["width"] >= PHONE["width"] - 80  # the page fills the screen's width
        assert page.locator("iframe.portal-pdf").is_hidden()  # phones draw no PDF in a frame

        # and the page wears the house style's colours (documents/library/_shared/house)
        def colour(locator, prop):
            return locator.evaluate(f"e => getComputedStyle(e).{prop}")

        assert colour(button, "backgroundColor") == "rgb(11, 79, 108)"  # --brand #0B4F6C
        assert colour(button, "borderBottomColor") == "rgb(53, 196, 181)"  # --brand-accent
        assert colour(page.locator("header.topbar"), "backgroundColor") == "rgb(11, 79, 108)"
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        context.close()
