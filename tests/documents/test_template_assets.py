"""Images and fonts of a template (documents/assets.py, the editor's upload in documents/web.py):
an author uploads them into a draft and sees them in the PDF preview; they are part of the
version's content, so signed off and frozen with it; what may not be carried is refused with
the reason; and a PDF reaches nothing but the template's own assets."""

from __future__ import annotations

import io

import pypdf
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from PIL import Image

from documents import assets, authoring, services
from documents import bundle as bundles
from documents.models import TemplateVersion
from tests.documents import test_authoring, test_pdf_security
from tests.documents.test_authoring import editor_post

draft_v1 = test_authoring.draft_v1
counting_server = test_pdf_security.counting_server

LETTER_WITH_LOGO = '<img src="asset:logo.png" alt="Logo">\n<h1>Dear {{ customer.name }}</h1>\n'
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
    b'<rect width="40" height="20" fill="#0B4F6C"/></svg>'
)


def png(width: int = 60, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (11, 79, 108)).save(out, "PNG")
    return out.getvalue()


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(out, "JPEG")
    return out.getvalue()


def brand_font() -> bytes:
    """A TrueType font whose every letter is a square."""
    letters = [chr(c) for c in range(ord("A"), ord("z") + 1) if chr(c).isalpha()] + ["space"]
    glyphs = [".notdef", *letters]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(glyphs)
    builder.setupCharacterMap({ord(" "): "space"} | {ord(c): c for c in letters if len(c) == 1})
    pen = TTGlyphPen(None)
    for x, y in ((100, 0), (100, 700), (500, 700), (500, 0)):
        (pen.moveTo if (x, y) == (100, 0) else pen.lineTo)((x, y))
    pen.closePath()
    square = pen.glyph()
    builder.setupGlyf({g: square for g in glyphs})
    builder.setupHorizontalMetrics({g: (600, 100) for g in glyphs})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "CcmSquares", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    out = io.BytesIO()
    builder.save(out)
    return out.getvalue()


def upload(client, version, name: str, data: bytes, files: dict[str, str] | None = None):
    files = files or authoring.editor_files(services.version_bundle(version))
    return client.post(
        f"/templates/versions/{version.pk}/",
        editor_post(files, action="upload", asset=SimpleUploadedFile(name, data)),
    )


def preview_pdf(client, response) -> pypdf.PdfReader:
    token = response.context["preview"]["token"]
    pdf = client.get(f"/templates/preview/{token}/proof.pdf")
    assert pdf["Content-Type"] == "application/pdf"
    return pypdf.PdfReader(io.BytesIO(pdf.content))


def font_names(reader: pypdf.PdfReader) -> set[str]:
    fonts = reader.pages[0]["/Resources"]["/Font"]
    return {str(font.get_object()["/BaseFont"]) for font in fonts.values()}


def test_an_uploaded_image_is_stored_in_the_draft_and_shown_in_the_preview(
    author, client, draft_v1
):
    # given an author who has typed a reference to a logo into the letter, not yet saved
    client.force_login(author)
    files = authoring.editor_files(services.version_bundle(draft_v1))
    files["print.html"] = LETTER_WITH_LOGO
    before = draft_v1.content_hash
    # when they upload the logo
    response = upload(client, draft_v1, "Logo.PNG", png(), files)
    # then it is stored in the draft under the name the letter uses, and the preview shows it
    assert response.status_code == 200, response.content.decode()
    draft_v1.refresh_from_db()
    assert services.version_bundle(draft_v1).assets == {"logo.png": png()}
    assert draft_v1.content_hash != before
    page = preview_pdf(client, response).pages[0]
    assert [image.image.size for image in page.images] == [(60, 30)]
    assert "asset:logo.png" in response.content.decode()
    # and the typed letter is still in the box, unsaved
    typed = {f["path"]: f["text"] for f in response.context["fields"]}["print.html"]
    assert typed.replace("\r\n", "\n") == LETTER_WITH_LOGO
    assert "asset:logo.png" not in draft_v1.content["files"]["print.html"]


def test_an_uploaded_font_sets_the_letter_in_it(author, client, draft_v1):
    client.force_login(author)
    files = authoring.editor_files(services.version_bundle(draft_v1))
    files["print.css"] = (
        '@font-face { font-family: "Brand"; src: url(asset:brand.ttf); }\n'
        'h1 { font-family: "Brand"; }\n'
    )
    response = upload(client, draft_v1, "brand.ttf", brand_font(), files)
    assert response.status_code == 200, response.content.decode()
    # (a PDF names an embedded font by the CSS family it was loaded as: "ABCDEF+Brand-Bold")
    names = font_names(preview_pdf(client, response))
    assert any(name.partition("+")[2].startswith("Brand") for name in names), names


def test_a_document_composed_from_the_saved_version_carries_the_image(author, client, draft_v1):
    # given a draft whose letter shows an uploaded logo, saved
    client.force_login(author)
    upload(client, draft_v1, "logo.png", png(48, 48))
    files = authoring.editor_files(services.version_bundle(draft_v1))
    files["print.html"] = LETTER_WITH_LOGO
    saved = client.post(f"/templates/versions/{draft_v1.pk}/", editor_post(files, action="save"))
    assert saved.status_code == 302, saved.content.decode()
    draft_v1.refresh_from_db()
    # when a document is composed from the stored version
    document = services.document_compose(
        version=draft_v1, data={"customer": {"name": "Ada Lovelace"}}
    )
    # then its PDF holds the logo as an image XObject
    with document.file.open("rb") as stored:
        page = pypdf.PdfReader(io.BytesIO(stored.read())).pages[0]
    xobjects = page["/Resources"]["/XObject"]
    images = [x for x in xobjects.values() if x.get_object()["/Subtype"] == "/Image"]
    assert len(images) == 1
    assert [image.image.size for image in page.images] == [(48, 48)]


def test_an_outside_url_in_the_template_fetches_nothing(
    author, client, draft_v1, counting_server, caplog
):
    # given a letter with its own logo and references to an outside server in HTML and CSS
    url, hits = counting_server
    client.force_login(author)
    files = authoring.editor_files(services.version_bundle(draft_v1))
    files["print.html"] = LETTER_WITH_LOGO + f'<img src="{url}/tracker.png" alt="">\n'
    files["print.css"] = (
        f"@import url({url}/style.css);\n"
        f'@font-face {{ font-family: "Far"; src: url({url}/far.ttf); }}\n'
        f"h1 {{ font-family: Far; background: url({url}/bg.png); }}\n"
    )
    # when the author uploads the logo and the preview renders
    response = upload(client, draft_v1, "logo.png", png(), files)
    # then only the template's own image is in the PDF and the server was never asked
    assert response.status_code == 200, response.content.decode()
    assert len(preview_pdf(client, response).pages[0].images) == 1
    assert hits == []


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        (
            "evil.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            "remove the &lt;script&gt; element",
        ),
        (
            "pixel.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
            b'<image xlink:href="http://tracker.example/p.png"/></svg>',
            "an image may refer only to its own parts",
        ),
        (
            "bomb.svg",
            b'<!DOCTYPE svg [<!ENTITY a "aaaa">]><svg xmlns="http://www.w3.org/2000/svg"/>',
            "remove the DOCTYPE",
        ),
        ("photo.png", jpeg(), "the file is a JPEG image, not a PNG image"),
        ("anim.gif", b"GIF89a", "PNG, JPEG and SVG images and TrueType, OpenType and WOFF fonts"),
        ("font.ttf", b"not a font at all", "this is not a TrueType font"),
        ("empty.png", b"", "the file is empty"),
    ],
)
def test_an_asset_that_may_not_be_carried_is_refused_with_the_reason(
    author, client, draft_v1, name, data, reason
):
    client.force_login(author)
    before = draft_v1.content_hash
    response = upload(client, draft_v1, name, data)
    assert response.status_code == 422
    assert reason in response.content.decode()
    assert 'aria-invalid="true"' in response.content.decode()
    draft_v1.refresh_from_db()
    assert draft_v1.content_hash == before


def test_an_image_over_the_size_limit_is_refused_before_it_is_read(
    author, client, draft_v1, monkeypatch
):
    monkeypatch.setitem(assets.KINDS, "png", ("PNG image", 2 * assets.KIB))
    client.force_login(author)
    response = upload(client, draft_v1, "big.png", png(400, 400) + b"\0" * 4096)
    assert response.status_code == 422
    assert "a PNG image may be at most 2 KB" in response.content.decode()
    assert services.version_bundle(TemplateVersion.objects.get(pk=draft_v1.pk)).assets == {}


def test_an_svg_that_is_only_a_picture_is_stored(author, client, draft_v1):
    client.force_login(author)
    response = upload(client, draft_v1, "mark.svg", SVG)
    assert response.status_code == 200
    draft_v1.refresh_from_db()
    assert services.version_bundle(draft_v1).assets == {"mark.svg": SVG}


def test_assets_are_signed_off_and_frozen_with_the_version(author, client, draft_v1):
    # given a draft with a logo, submitted for sign-off
    client.force_login(author)
    upload(client, draft_v1, "logo.png", png())
    draft_v1.refresh_from_db()
    services.template_version_submit(version=draft_v1, by=author)
    draft_v1.refresh_from_db()
    # then the hash the reviewer signs covers the logo
    assert draft_v1.content_hash == bundles.content_hash(draft_v1.content)
    assert "logo.png" in draft_v1.content["assets"]
    # and neither the editor nor the service can change or remove it any more
    assert upload(client, draft_v1, "logo.png", png(10, 10)).status_code == 403
    with pytest.raises(services.VersionFrozen):
        authoring.asset_remove(version=draft_v1, name="logo.png", by=author)
    draft_v1.refresh_from_db()
    assert services.version_bundle(draft_v1).assets == {"logo.png": png()}


def test_removing_an_asset_takes_it_out_of_the_draft(author, client, draft_v1):
    client.force_login(author)
    upload(client, draft_v1, "logo.png", png())
    files = authoring.editor_files(services.version_bundle(draft_v1))
    response = client.post(
        f"/templates/versions/{draft_v1.pk}/",
        editor_post(files, action="remove-asset:logo.png"),
    )
    assert response.status_code == 200
    draft_v1.refresh_from_db()
    assert services.version_bundle(draft_v1).assets == {}


def test_an_import_from_git_is_held_to_the_same_rules(author, tmp_path):
    bundle = services.version_bundle(
        authoring.template_start(
            code="svgletter", name="SVG letter", category="service", channels=["print"], by=author
        )
    )
    folder = tmp_path / "library" / "svgletter"
    bundles.write_folder(bundle, folder)
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "evil.svg").write_bytes(
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="fetch(1)"/>'
    )
    with pytest.raises(bundles.BundleInvalid) as refused:
        bundles.validate(bundles.read_folder(folder))
    assert "assets/evil.svg: remove the onload attribute of <svg>" in str(refused.value)
