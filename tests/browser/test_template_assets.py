"""An author adds the company logo to a letter in Chromium: uploads the image beside the
editor, refers to it from the letter, and sees it in the PDF proof; an unsafe SVG is refused
with the reason at the upload field."""

from __future__ import annotations

import io

import pypdf
from playwright.sync_api import Page, expect

from documents import authoring
from tests.documents.test_template_assets import png

EVIL_SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
LETTER = '<img src="asset:company-logo.png" alt="Logo">\n<h1>Dear {{ customer.name }}</h1>\n'


def test_author_uploads_a_logo_and_sees_it_in_the_pdf_proof(page: Page, login, author, tmp_path):
    # given a draft letter open in the editor
    version = authoring.template_start(
        code="welcome", name="Welcome letter", category="service", channels=["print"], by=author
    )
    logo = tmp_path / "Company Logo.png"
    logo.write_bytes(png(120, 40))
    evil = tmp_path / "evil.svg"
    evil.write_bytes(EVIL_SVG)
    login(author)
    page.goto(f"/templates/versions/{version.pk}/")
    # when the author types a reference to the logo and uploads it
    page.get_by_label("print.html").fill(LETTER)
    page.get_by_label("Upload an image or font").set_input_files(str(logo))
    page.get_by_role("button", name="Upload and preview").click()
    # then it is listed with the way to refer to it, and the proof shows it
    expect(page.get_by_role("status")).to_contain_text("company-logo.png is stored in draft v1")
    assets = page.get_by_role("table", name="Images and fonts of v1")
    expect(assets).to_contain_text('<img src="asset:company-logo.png"')
    expect(page.get_by_label("print.html")).to_have_value(LETTER)
    frame = page.locator("iframe[title='PDF proof']")
    expect(frame).to_be_visible()
    proof = page.request.get(frame.get_attribute("src") or "")
    images = pypdf.PdfReader(io.BytesIO(proof.body())).pages[0].images
    assert [image.image.size for image in images] == [(120, 40)]
    # when they try an SVG that would run a script
    page.get_by_label("Upload an image or font").set_input_files(str(evil))
    page.get_by_role("button", name="Upload and preview").click()
    # then it is refused, the reason beside the field, and the logo is still there
    expect(page.get_by_label("Upload an image or font")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#asset_error")).to_contain_text("remove the onload attribute of <svg>")
    expect(assets).to_contain_text("company-logo.png")
    expect(assets).not_to_contain_text("evil.svg")
