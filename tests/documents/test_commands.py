from __future__ import annotations

import json
from pathlib import Path

import pypdf
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from documents.bundle import write_folder
from documents.models import TemplateVersion
from tests.documents.factories import letter_bundle


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "library"
    write_folder(letter_bundle("letter"), folder / "letter")
    write_folder(letter_bundle("notice", name="Notice"), folder / "notice")
    return folder


def test_import_creates_drafts_then_nothing_when_unchanged(library, author, capsys):
    call_command("templates_import", str(library), "--as", "alex")
    first = capsys.readouterr().out
    assert "letter: created (v1)" in first
    assert "notice: created (v1)" in first
    call_command("templates_import", str(library), "--as", "alex")
    assert capsys.readouterr().out.splitlines() == [
        "letter: unchanged (v1)",
        "notice: unchanged (v1)",
    ]
    assert TemplateVersion.objects.count() == 2


def test_import_makes_a_new_draft_only_for_the_changed_template(library, author, capsys):
    call_command("templates_import", str(library), "--as", "alex")
    html = library / "letter" / "print.html"
    html.write_text(html.read_text() + "\n<p>New paragraph</p>")
    call_command("templates_import", str(library), "--as", "alex")
    out = capsys.readouterr().out
    assert "letter: new_version (v2)" in out
    assert "notice: unchanged (v1)" in out
    assert TemplateVersion.objects.get(template__code="letter", number=2).state == "draft"


def test_import_reports_a_broken_folder_and_keeps_the_rest(library, author, capsys):
    (library / "notice" / "schema.json").write_text("{not json")
    with pytest.raises(CommandError, match="1 template folder"):
        call_command("templates_import", str(library), "--as", "alex")
    out = capsys.readouterr().out
    assert "letter: created (v1)" in out
    assert "notice: invalid" in out


def test_export_round_trips_through_import(published, tmp_path, author, capsys):
    out_dir = tmp_path / "export"
    call_command("templates_export", str(out_dir))
    assert json.loads((out_dir / "letter" / "template.json").read_text())["code"] == "letter"
    assert (out_dir / "letter" / "lang" / "de" / "print.html").exists()
    call_command("templates_import", str(out_dir), "--as", "alex")
    assert "letter: unchanged (v1)" in capsys.readouterr().out


def test_template_proof_writes_a_marked_pdf(draft, tmp_path, capsys):
    out = tmp_path / "proof.pdf"
    call_command("template_proof", "letter", "--version", "1", "--out", str(out))
    reader = pypdf.PdfReader(out)
    assert "PROOF" in reader.pages[0].extract_text()
    assert "Dear Ada Lovelace" in reader.pages[0].extract_text()


def test_template_proof_with_bad_data_exits_non_zero_with_the_reason(draft, tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"customer": {"name": "Ada"}}))
    with pytest.raises(CommandError) as excinfo:
        call_command(
            "template_proof", "letter", "--data", str(data), "--out", str(tmp_path / "x.pdf")
        )
    assert "balance: 'balance' is a required property" in str(excinfo.value)
    assert not (tmp_path / "x.pdf").exists()


def test_demo_library_is_valid_and_unchanged_on_reimport(author, capsys):
    library = Path(__file__).resolve().parents[2] / "documents" / "library"
    call_command("templates_import", str(library), "--as", "alex")
    call_command("templates_import", str(library), "--as", "alex")
    lines = capsys.readouterr().out.splitlines()
    second = lines[len(lines) // 2 :]
    assert second
    assert all("unchanged" in line for line in second)
