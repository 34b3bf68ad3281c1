"""Shared parts (`_shared/<name>/`): one place for a library's house style, merged into every
template that names it when the folder is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from documents import services
from documents.bundle import (
    RENDITIONS,
    BundleInvalid,
    content_hash,
    read_folder,
    validate,
    write_folder,
)
from documents.demo import LIBRARY
from tests.documents.factories import letter_bundle

HOUSE_CSS = "body { font-family: 'Liberation Sans'; color: #222; }\n"
TEMPLATE_CSS = "h1 { font-family: 'DejaVu Sans'; color: #0b5cad; }"
MARKER = '/* ---------- end of shared part "house" ---------- */\n'


def opt_in(folder: Path, *names: str) -> None:
    path = folder / "template.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "shared": list(names)}, indent=2))


def make_part(root: Path, name: str, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root / name


@pytest.fixture
def library(tmp_path):
    """A library with one template (letter) that opts in to the house part."""
    folder = tmp_path / "library"
    write_folder(letter_bundle("letter"), folder / "letter")
    opt_in(folder / "letter", "house")
    make_part(
        folder / "_shared",
        "house",
        {
            "print.css": HOUSE_CSS,
            "partials/letterhead.html": "<div class='lh'><img src='asset:logo.svg'></div>",
            "partials/footer.html": "<p>house footer</p>",
            "static/leaflet.html": "<h2>Complaints leaflet</h2>",
            "assets/logo.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        },
    )
    return folder


def test_shared_partials_static_and_assets_are_added(library):
    bundle = read_folder(library / "letter")

    assert bundle.files["partials/letterhead.html"].startswith("<div class='lh'>")
    assert bundle.files["static/leaflet.html"] == "<h2>Complaints leaflet</h2>"
    assert bundle.assets["logo.svg"] == b"<svg xmlns='http://www.w3.org/2000/svg'/>"


def test_the_template_wins_over_the_shared_part(library):
    # given: the template and the house part both have partials/footer.html and assets/logo.svg
    (library / "letter" / "assets").mkdir()
    (library / "letter" / "assets" / "logo.svg").write_bytes(b"<svg id='own'/>")

    # when
    bundle = read_folder(library / "letter")

    # then
    assert bundle.files["partials/footer.html"] == "<p class='footer'>Northwind Utilities</p>"
    assert bundle.assets["logo.svg"] == b"<svg id='own'/>"


def test_shared_css_comes_first_then_a_marker_then_the_templates_own(library):
    css = read_folder(library / "letter").files["print.css"]

    assert css == HOUSE_CSS + MARKER + TEMPLATE_CSS


def test_shared_css_is_prepended_to_language_variants_and_given_to_templates_without_css(library):
    (library / "letter" / "lang" / "de" / "print.css").write_text("h1 { color: red; }")
    (library / "letter" / "print.css").unlink()

    files = read_folder(library / "letter").files

    assert files["lang/de/print.css"] == HOUSE_CSS + MARKER + "h1 { color: red; }"
    assert files["print.css"] == HOUSE_CSS + MARKER


def test_parts_merge_in_the_order_named_and_later_parts_win(library):
    # given
    make_part(
        library / "_shared",
        "campaign",
        {"print.css": "body { color: green; }", "partials/letterhead.html": "<div>campaign</div>"},
    )
    opt_in(library / "letter", "house", "campaign")

    # when
    files = read_folder(library / "letter").files

    # then
    assert files["print.css"] == (
        HOUSE_CSS
        + MARKER
        + "body { color: green; }\n"
        + '/* ---------- end of shared part "campaign" ---------- */\n'
        + TEMPLATE_CSS
    )
    assert files["partials/letterhead.html"] == "<div>campaign</div>"


def test_the_merged_bundle_is_self_contained_and_valid(library):
    bundle = read_folder(library / "letter")

    assert "shared" not in bundle.meta
    validate(bundle)


def test_an_unknown_shared_part_is_refused_by_name(library):
    opt_in(library / "letter", "house", "brand", "legal")

    with pytest.raises(BundleInvalid) as excinfo:
        read_folder(library / "letter")

    assert "shared part(s) brand, legal not found" in str(excinfo.value)


def test_a_shared_name_must_be_a_slug_not_a_path(library, tmp_path):
    make_part(tmp_path, "outside", {"print.css": "body { display: none; }"})
    opt_in(library / "letter", "../../outside")

    with pytest.raises(BundleInvalid) as excinfo:
        read_folder(library / "letter")

    assert "template.json shared.0" in str(excinfo.value)


def test_a_shared_part_holds_no_renditions(library):
    (library / "_shared" / "house" / "email.html").write_text("<p>house email</p>")

    with pytest.raises(BundleInvalid) as excinfo:
        read_folder(library / "letter")

    assert "shared part house holds email.html" in str(excinfo.value)


def test_shared_root_points_at_another_folder(library, tmp_path):
    elsewhere = tmp_path / "brand-kit"
    make_part(elsewhere, "house", {"print.css": "body { color: navy; }\n"})

    css = read_folder(library / "letter", shared_root=elsewhere).files["print.css"]

    assert css == "body { color: navy; }\n" + MARKER + TEMPLATE_CSS


def test_the_hash_follows_the_shared_css(library):
    before = content_hash(read_folder(library / "letter").to_content())
    (library / "_shared" / "house" / "print.css").write_text(HOUSE_CSS + "h2 { color: #333; }\n")

    after = content_hash(read_folder(library / "letter").to_content())

    assert after != before


@pytest.mark.django_db
def test_a_house_style_change_makes_a_new_draft_on_import(library, author):
    # given: the library is imported; _shared is not a template
    first = services.templates_import(folder=library, by=author)
    assert [(r.code, r.outcome) for r in first] == [("letter", "created")]
    assert services.templates_import(folder=library, by=author)[0].outcome == "unchanged"

    # when
    (library / "_shared" / "house" / "print.css").write_text("body { color: #000; }\n")
    result = services.templates_import(folder=library, by=author)[0]

    # then
    assert (result.outcome, result.version) == ("new_version", 2)
    version = services.Template.objects.get(code="letter").versions.get(number=2)
    assert version.content["files"]["print.css"].startswith("body { color: #000; }\n" + MARKER)


@pytest.mark.django_db
def test_export_flattens_shared_parts_and_imports_back_unchanged(library, author, tmp_path):
    # given
    services.templates_import(folder=library, by=author)

    # when
    out = tmp_path / "export"
    services.templates_export(folder=out, latest=True)

    # then
    assert "shared" not in json.loads((out / "letter" / "template.json").read_text())
    assert (out / "letter" / "print.css").read_text() == HOUSE_CSS + MARKER + TEMPLATE_CSS
    assert (out / "letter" / "assets" / "logo.svg").exists()
    assert services.templates_import(folder=out, by=author)[0].outcome == "unchanged"


def test_the_demo_library_keeps_its_house_style_in_one_place():
    house = LIBRARY / "_shared" / "house"
    house_css = (house / "print.css").read_text()
    assert not (house / "template.json").exists()
    for folder in sorted(p for p in LIBRARY.iterdir() if (p / "template.json").is_file()):
        meta = json.loads((folder / "template.json").read_text())
        if "print" not in meta["channels"]:
            continue
        assert meta.get("shared", [])[:1] == ["house"], folder.name
        if folder.name.startswith("complaint_"):
            # The three complaint letters also share their ombudsman wording and signature.
            assert "complaint" in meta["shared"], folder.name
            assert not (folder / "partials" / "ombudsman_contact.html").exists(), folder.name
        for rel in ("assets/logo.svg", "partials/letterhead.html", "partials/address.html"):
            assert not (folder / rel).exists(), (folder.name, rel)
        own_css = folder / "print.css"
        assert not own_css.exists() or house_css not in own_css.read_text(), folder.name
        bundle = read_folder(folder)
        assert bundle.files["print.css"].startswith(house_css + MARKER), folder.name
        assert set(RENDITIONS["print"]) <= set(bundle.files), folder.name
        assert "logo.svg" in bundle.assets, folder.name


# -- links and paths outside the library (issue 10) ----------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A folder outside the library holding what an attacker wants in a proof."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "print.css").write_text("body { color: red; }\n")
    (folder / "secret.html").write_text("<p>secret</p>")
    return folder


def _import(library, author):
    (result,) = services.templates_import(folder=library, by=author)
    return result


@pytest.mark.django_db
def test_import_refuses_a_symlinked_shared_folder(library, outside, author):
    # given _shared/house is a link to a folder outside the library
    house = library / "_shared" / "house"
    for path in sorted(house.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    house.rmdir()
    house.symlink_to(outside, target_is_directory=True)
    # when
    result = _import(library, author)
    # then nothing is imported, and the reason names the link
    assert result.outcome == "invalid"
    assert result.reason == (
        f"{house} is a symbolic link; a template library may not contain links "
        "(copy the file or folder in instead)"
    )
    assert not services.Template.objects.filter(code="letter").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "rel", ["partials/footer.html", "schema.json", "samples/default.json", "print.css"]
)
def test_import_refuses_a_symlinked_file_in_a_template(library, outside, author, rel):
    link = library / "letter" / rel
    link.unlink()
    link.symlink_to(outside / "secret.html")
    result = _import(library, author)
    assert result.outcome == "invalid"
    assert result.reason.startswith(f"{link} is a symbolic link")


@pytest.mark.django_db
def test_import_refuses_a_symlinked_template_folder(library, tmp_path, author):
    real = tmp_path / "elsewhere" / "letter"
    real.parent.mkdir()
    (library / "letter").rename(real)
    (library / "letter").symlink_to(real, target_is_directory=True)
    result = _import(library, author)
    assert result.outcome == "invalid"
    assert result.reason.startswith(f"{library / 'letter'} is a symbolic link")


@pytest.mark.django_db
def test_import_refuses_an_absurd_page_size_with_a_reason(library, author):
    path = library / "letter" / "template.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "page": {"size": "1000000cm", "margin": "18mm"}}))
    result = _import(library, author)
    assert result.outcome == "invalid"
    assert result.reason == (
        "template.json page.size: 1000000cm is not a page size; a side must measure between "
        "10 mm and 5080 mm (A4 is 210mm 297mm)"
    )


@pytest.mark.django_db
def test_proof_of_a_huge_css_page_gives_a_reason_not_zero_division(author, tmp_path):
    # given a draft whose print.css forces a page of ten kilometres
    bundle = letter_bundle("letter")
    bundle.files["print.css"] = "@page { size: 1000000cm !important }"
    services.template_version_create(
        template=services.Template.objects.create(
            code="letter", name="Letter", category="transactional"
        ),
        bundle=bundle,
        by=author,
    )
    # when the author asks for a proof
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as excinfo:
        call_command("template_proof", "letter", "--out", str(tmp_path / "proof.pdf"))
    # then
    message = str(excinfo.value)
    assert "ZeroDivisionError" not in message
    assert "page 1 is 10,000,000 mm wide; a page must measure between 10 mm and 5080 mm" in message
