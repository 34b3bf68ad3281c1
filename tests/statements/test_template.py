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


PER_METER = [
    "meter",
    "supply_address",
    "lines",
    "vat_rounding",
    "net",
    "vat",
    "total",
    "consumption",
    "by_band",
    "comparison",
    "daily",
    "trend",
    "estimated",
    "register",
    "flags",
]


def _two_meters(sample: dict) -> dict:
    """The sample's meter and a gas meter of 50 m³ costing £10.00 + £0.50 VAT: the totals
    across them are 113.98 + 10.00 = 123.98 net, 5.70 + 0.50 = 6.20 VAT, 130.18 in all."""
    electricity = {key: sample[key] for key in PER_METER}
    gas = {
        **electricity,
        "meter": {"serial": "G-7700123", "unit": "m3", "kind": "interval"},
        "net": "10.00",
        "vat": "0.50",
        "total": "10.50",
        "consumption": "50.000",
        "by_band": [{"band": "all day", "quantity": "50.000", "net": "10.00"}],
        "lines": [{**line, "unit": "m3"} for line in sample["lines"] if line["kind"] == "standing"],
    }
    common = {key: value for key, value in sample.items() if key not in PER_METER}
    return {
        **common,
        "supply_address": sample["supply_address"],
        "net": "123.98",
        "vat": "6.20",
        "total": "130.18",
        "estimated": sample["estimated"],
        "meters": [electricity, gas],
    }


def test_a_statement_of_two_meters_lists_each_in_german_and_welsh(usage_statement):
    # given a statement of an electricity and a gas meter
    samples = usage_statement.content["samples"]
    for language, sample, words, total in [
        ("de", samples["german"], ["Ihre Zähler", "Zähler G-7700123 (m³)", "50,0 m³"], "130,18"),
        ("cy", samples["welsh"], ["Eich mesuryddion", "Mesurydd G-7700123 (m³)"], "£130.18"),
    ]:
        # when it is composed in German and in Welsh
        data = _two_meters(sample)
        document = documents.document_compose(version=usage_statement, data=data, language=language)
        text = _text(document)
        # then both meters, the gas meter's own figures and the total across them are shown,
        # and no English label is left
        for expected in [*words, sample["meter"]["serial"], total]:
            assert expected in text, (language, expected)
        for label in [*ENGLISH_LABELS, "Your meters"]:
            assert label not in text, (language, label)
