"""Charts drawn for paper (drawing 2) against charts drawn as inline SVG (drawing 1): the same
page, without what paper never shows; an unknown drawing is refused."""

from __future__ import annotations

import io
import re

import pypdf
import pytest
from PIL import Image, ImageChops

from documents.composition import Composer, Sources, UnknownDrawing, chart
from documents.rendering import PdfEngine, first_page_png, render_pdf_inprocess
from documents.sandbox import render_pdf
from tests.documents.factories import drawn_chart

CHART = {
    "kind": "bar",
    "labels": ["2025-01", "2025-02", "2025-03"],
    "values": [120, 340.5, 200],
    "title": "Use & cost",
    "unit": "kWh",
    "label_format": "LLL",
    "series_name": "Measured",
    "marked": ["2025-02"],
    "marked_name": "Estimated",
}
CHARTED = Sources(
    print_html=(
        "<p>Usage</p><div class='chart'>{{ chart('bar', ['Jan', 'Feb', 'Mar'], [3, 5, 2], "
        "title='kWh per month', unit='kWh', width=900) }}</div>"
        "<div class='chart'>{{ chart('line', ['Jan', 'Feb', 'Mar'], [1.5, 2, 4], "
        "title='Trend', series_name='Use') }}</div>"
    ),
    # As the house style does: the chart's svg fills the column.
    print_css=".chart svg { width: 100%; height: auto; }",
)


def _texts(svg: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def test_a_chart_for_paper_leaves_out_only_what_paper_never_shows():
    screen = chart(**CHART, drawing=1)
    markup = chart(**CHART, drawing=2)
    paper = drawn_chart(markup)

    # placed as a data: URL image in an svg of the chart's size (the template's CSS still sizes it)
    assert markup.startswith('<svg xmlns="http://www.w3.org/2000/svg" class="pygal-chart"')
    assert 'viewBox="0 0 480 220" width="480" height="220"' in markup
    assert "<text" not in markup
    # what paper never shows is gone: tooltips and their data, hover titles, hover styles
    for unseen in ("<desc", "<title", "tooltip-overlay", ":hover", ".tooltip", "<script"):
        assert unseen in screen or unseen == "<script"
        assert unseen not in paper
    # the x axis's guides, hidden by the chart's style, are gone; the value axis's remain
    assert screen.count('class="guide line"') == 3
    assert paper.count('class="guide line"') == 0
    assert paper.count("major guide line") == screen.count("major guide line") > 0
    # every word and number drawn, every bar and the legend remain, in the same order
    assert _texts(paper) == _texts(screen)
    shown = {"Jan", "Feb", "Mar", "0\u00a0kWh", "400\u00a0kWh", "Use &amp; cost", "Estimated"}
    assert shown <= set(_texts(paper))
    assert paper.count("<rect") == screen.count("<rect") - 1  # the tooltip's box
    assert "#9FC4D6" in paper  # the estimated bar's tone
    assert chart(**CHART, drawing=2) == markup  # same bytes every time


def test_only_the_print_rendition_draws_for_paper():
    sources = Sources(
        print_html="{{ chart('bar', ['a'], [1]) }}",
        email_subject="s",
        email_html="{{ chart('bar', ['a'], [1]) }}",
    )
    composer = Composer(sources)

    assert "<image" in composer.print_html({}, drawing=2)
    assert "<image" not in composer.print_html({}, drawing=1)
    # a screen (email, portal) keeps the inline, interactive chart
    assert "<image" not in composer.email({}).html
    assert "<desc" in composer.email({}).html


def _png(pdf: bytes) -> Image.Image:
    return Image.open(io.BytesIO(first_page_png(pdf))).convert("RGB")


def test_a_chart_for_paper_prints_the_same_page():
    inline = render_pdf_inprocess(sources=CHARTED, locale="en_GB", data={}, drawing=1).data
    paper = render_pdf_inprocess(sources=CHARTED, locale="en_GB", data={}, drawing=2).data

    assert paper != inline
    # the numbers, labels, axes and titles are text on the page, as before
    texts = [pypdf.PdfReader(io.BytesIO(pdf)).pages[0].extract_text() for pdf in (inline, paper)]
    assert texts[0] == texts[1]
    for word in ("kWh per month", "Jan", "Mar", "6 kWh", "Trend", "Use"):
        assert word in texts[1]
    # and the page looks the same
    difference = ImageChops.difference(_png(inline), _png(paper))
    assert difference.getbbox() is None


def test_an_unknown_drawing_is_refused():
    with pytest.raises(UnknownDrawing, match="chart drawing 3 is unknown: this CCM draws 1, 2"):
        render_pdf(sources=CHARTED, locale="en_GB", data={}, drawing=3)
    with pytest.raises(UnknownDrawing, match="chart drawing 0 is unknown"):
        Composer(CHARTED).print_html({}, drawing=0)
    with pytest.raises(UnknownDrawing, match="chart drawing 7 is unknown"):
        chart("bar", ["a"], [1], drawing=7)


def test_the_image_cache_keeps_the_template_images_not_the_charts():
    png = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(png, format="PNG")
    sources = Sources(
        print_html="<img src='asset:logo.png'>{{ chart('bar', ['a', 'b', 'c'], values) }}",
        assets={"logo.png": png.getvalue()},
    )
    engine = PdfEngine(sources, locale="en_GB")
    composer = Composer(sources)

    # when two customers' documents are rendered, each with its own chart
    for values in ([3, 5, 2], [4, 1, 6]):
        engine.render(composer.print_html({"values": values}, drawing=2))

    # then the logo, in every document, is kept; the charts, each in one document, are not

    urls = [key for key in engine._image_cache if isinstance(key, str)]
    assert "asset:logo.png" in urls
    assert not [url for url in urls if url.startswith("data:")]
