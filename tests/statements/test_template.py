"""The usage statement template: every label goes through labels.html, so German is German."""

from __future__ import annotations

import io

import pypdf

from documents import services as documents

ENGLISH_LABELS = [
    "Your energy use",
    "Amount to pay",
    "Statement date",
    "How your use compares",
    "Your daily use",
    "Your use over 13 months",
    "Estimated readings",
    "Standing charge",
    "Page ",
]


def _text(document) -> str:
    reader = pypdf.PdfReader(io.BytesIO(document.file.read()))
    return "\n".join(page.extract_text() for page in reader.pages)


def test_english_statement_shows_the_computed_figures_and_marks_estimates(usage_statement):
    sample = usage_statement.content["samples"]["default"]
    text = _text(documents.document_compose(version=usage_statement, data=sample, language="en"))
    assert f"£{sample['total']}" in text
    assert "Estimated readings (E)" in text
    assert "Measured" in text  # the daily chart's legend: estimated days are bars of their own
    assert "Your use over 13 months (kWh)" in text
    assert "Same period last year" in text
    assert "Check what stays on" in text


def test_german_statement_has_no_english_label(usage_statement):
    sample = usage_statement.content["samples"]["german"]
    text = _text(documents.document_compose(version=usage_statement, data=sample, language="de"))
    for label in ENGLISH_LABELS:
        assert label not in text
    assert "Ihr Verbrauch in 13 Monaten (kWh)" in text
    assert "Geschätzte Messwerte (G)" in text
    assert "Gemessen" in text
    assert "Grundpreis" in text
    assert "Seite 1 von" in text
    assert "Jan. 26" in text or "Jan 26" in text  # month labels in German


def test_welsh_statement_has_no_english_left(usage_statement):
    # given the Welsh sample (the same figures as the German one)
    sample = usage_statement.content["samples"]["welsh"]
    # when it is composed in Welsh
    text = _text(documents.document_compose(version=usage_statement, data=sample, language="cy"))
    # then no English label, footer, page counter or month name is left
    for label in [*ENGLISH_LABELS, "Registered in England", "PO Box", " of ", "Jan 26", "Dec 25"]:
        assert label not in text, label
    assert "Eich defnydd dros 13 mis (kWh)" in text
    assert "Darlleniadau amcangyfrifedig (A)" in text
    assert "Wedi'u mesur" in text
    assert "Tâl sefydlog" in text
    assert "Cofrestrwyd yng Nghymru a Lloegr" in text  # the house footer, from messages/cy.json
    assert "Tudalen 1 o" in text
    assert "Telerau ac amodau" in text  # the appended terms insert, counted in the pages
    assert "Ion 26" in text
    assert "Rhag 25" in text
