"""Documents that look like a bank's: a translated statement is translated on every line (labels,
chart titles and months, the footer, the page counter, the terms insert); charts have round
ticks and units written the way the reader's language writes numbers."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pypdf
import pytest
from markupsafe import Markup

from documents import bundle
from documents.bundle import BundleInvalid
from documents.composition import (
    PRINT_DRAWING,
    Composer,
    Sources,
    TemplateError,
    chart,
    nice_ticks,
)
from documents.demo import LIBRARY
from documents.rendering import render_pdf_inprocess

# Words of the English statement that must not survive into another language (names and
# addresses such as "Northwind House, 1 Harbour Way" are not translated, as on a real letter).
ENGLISH = {
    "the", "and", "of", "to", "your", "you", "we", "our", "for", "by", "on", "with", "or", "at",
    "page", "statement", "account", "amount", "pay", "payment", "payments", "charges", "charge",
    "registered", "company", "office", "terms", "conditions", "electricity", "usage",
    "readings", "reading", "estimated", "direct", "debit", "tariff", "period", "due", "date",
    "days", "vat", "box", "collected", "summary", "balance", "received", "thank",
}  # fmt: skip


def statement(language: str, sample: str) -> tuple[list[str], int]:
    version = bundle.read_folder(LIBRARY / "monthly_statement")
    pdf = render_pdf_inprocess(
        sources=bundle.sources(version, language),
        locale=bundle.locale_for(language),
        data=version.samples[sample],
    )
    reader = pypdf.PdfReader(io.BytesIO(pdf.data))
    return [page.extract_text() for page in reader.pages], pdf.page_count


def test_the_german_statement_has_no_english_left():
    # when the German customer's statement is rendered (its data names fuels and charges in
    # English, as the billing system sends them)
    texts, pages = statement("de", "german")

    # then every page, the appended terms included, is German: labels, chart titles and months,
    # the footer's company details and the page counter
    # (capitals only are postcodes and abbreviations: "YO1 9WE", "GB")
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", " ".join(texts)) if not w.isupper()}
    assert words & ENGLISH == set()
    first = texts[0]
    assert "Ihre Energierechnung" in first
    assert "Strom" in first
    assert "Mär" in first
    assert "Dez" in first
    assert "1.500 kWh" in first  # the axis, in German numbers with the unit
    assert "Eingetragen in England und Wales" in first  # the footer
    assert "Postfach 4410" in first  # the return address
    assert "Strom \N{EN DASH} Arbeitspreis" in texts[1]  # a line item named in the data
    assert "Allgemeine Geschäftsbedingungen" in texts[2]  # the insert
    for number, text in enumerate(texts, 1):
        assert f"Seite {number} von {pages}" in text


def test_the_english_statement_is_unchanged_in_english():
    texts, pages = statement("en", "default")

    assert "Your energy statement" in texts[0]
    assert "Electricity" in texts[0]
    assert "Mar" in texts[0]
    assert "1,500 kWh" in texts[0]
    assert "Registered in England and Wales" in texts[0]
    assert "PO Box 4410" in texts[0]
    assert "Terms and conditions" in texts[2]
    for number, text in enumerate(texts, 1):
        assert f"Page {number} of {pages}" in text


def test_translations_fill_values_and_keep_data_escaped():
    composer = Composer(
        Sources(
            print_html=(
                "<p>{{ _('Pay {amount} by {date}', amount=amount, date=date) }}</p>"
                "<p>{{ _(name) }}</p>"
                "{% set strong %}<b>{{ amount }}</b>{% endset %}"
                "<p>{{ _('Due: {amount}', amount=strong) }}</p>"
            ),
            messages={
                "Pay {amount} by {date}": "Zahlen Sie {amount} bis <em>{date}</em>",
                "Due: {amount}": "Fällig: {amount}",
            },
        ),
        locale="de_DE",
    )

    html = composer.print_html(
        {"amount": "<5 €>", "date": "1. März", "name": "<script>"}, drawing=PRINT_DRAWING
    )

    assert "<p>Zahlen Sie &lt;5 €&gt; bis <em>1. März</em></p>" in html
    assert "<p>&lt;script&gt;</p>" in html  # data without a translation stays text
    assert "<p>Fällig: <b>&lt;5 €&gt;</b></p>" in html


def test_a_message_without_its_value_says_which():
    composer = Composer(Sources(print_html="{{ _('Pay by {date}') }}"))

    with pytest.raises(TemplateError, match=r"needs a value for \{date\}"):
        composer.print_html({}, drawing=PRINT_DRAWING)


def test_print_css_messages_become_css_strings():
    composer = Composer(
        Sources(
            print_css='@page { @bottom-right { content: _("Page") " " counter(page) } }'
            ' p::after { content: _("Say \\"hi\\"") }',
            messages={"Page": "Seite", 'Say "hi"': 'Sag "hallo"'},
        )
    )

    css = composer.print_css()

    assert 'content: "Seite" " " counter(page)' in css
    assert 'content: "Sag \\"hallo\\""' in css


def test_validation_names_the_untranslated_texts(tmp_path):
    # given a German template whose catalog misses one text
    folder = tmp_path / "letter"
    (folder / "samples").mkdir(parents=True)
    (folder / "messages").mkdir()
    (folder / "template.json").write_text(
        json.dumps(
            {
                "code": "letter",
                "name": "Letter",
                "category": "service",
                "channels": ["print"],
                "languages": ["en", "de"],
            }
        )
    )
    (folder / "print.html").write_text("<p>{{ _('Hello') }} {{ _(\"Goodbye\") }}</p>")
    (folder / "samples" / "default.json").write_text("{}")
    (folder / "messages" / "de.json").write_text(json.dumps({"Hello": "Hallo"}))

    # when / then
    with pytest.raises(BundleInvalid, match=r"messages/de.json has no translation of 'Goodbye'"):
        bundle.validate(bundle.read_folder(folder))


def test_the_house_catalog_merges_with_the_templates_own():
    version = bundle.read_folder(LIBRARY / "monthly_statement")

    messages = bundle.catalog(version, "de")

    assert messages["Page"] == "Seite"  # from _shared/house/messages/de.json
    assert messages["Amount to pay"] == "Zu zahlender Betrag"  # the template's own
    assert bundle.messages_used(version) <= set(messages)


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (169, 301, [0, 100, 200, 300, 400]),
        (250, 1420, [0, 500, 1000, 1500]),
        (0.2, 0.93, [0, 0.25, 0.5, 0.75, 1.0]),
        (-40, 75, [-50, 0, 50, 100]),
        (0, 0, [0, 0.25, 0.5, 0.75, 1.0]),
    ],
)
def test_axis_ticks_are_round(low, high, ticks):
    assert nice_ticks(low, high) == ticks


def test_chart_writes_ticks_months_and_units_in_the_locale():
    svg = chart(
        "bar",
        ["2024-12", "2025-01", "2025-03"],
        [1200, 1420.5, 980],
        title="Gas",
        unit="kWh",
        label_format="LLL",
        locale="de_DE",
    )

    assert isinstance(svg, Markup)
    assert "1.500\u00a0kWh" in svg
    assert "1.000\u00a0kWh" in svg
    assert ">Dez<" in svg
    assert ">Mär<" in svg
    assert "<script" not in svg
    assert 'stroke-dasharray="none"' in svg or "stroke-dasharray:none" in svg


def test_a_bad_label_format_is_a_template_error():
    with pytest.raises(TemplateError, match="chart: date: '2025-13-01' is not an ISO date"):
        chart("bar", ["2025-13"], [1], label_format="LLL")


def test_library_catalogs_are_json_objects_of_texts():
    for path in Path(LIBRARY).rglob("messages/*.json"):
        messages = json.loads(path.read_text(encoding="utf-8"))
        assert all(isinstance(v, str) and v for v in messages.values()), path


def test_marked_bars_are_a_lighter_series_named_in_a_legend():
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    legend = {"series_name": "Gemessen", "marked_name": "Geschätzt (G)", "locale": "de_DE"}

    svg = chart("bar", days, [1, 2, 3], label_format="d", marked=["2026-01-02"], **legend)

    assert ">Gemessen<" in svg
    assert ">Geschätzt (G)<" in svg  # the legend names both series
    assert "#9FC4D6" in svg  # the marked series' lighter tone
    assert svg == chart("bar", days, [1, 2, 3], label_format="d", marked=["2026-01-02"], **legend)
    assert "#9FC4D6" not in chart("bar", days, [1, 2, 3], label_format="d", marked=[])
