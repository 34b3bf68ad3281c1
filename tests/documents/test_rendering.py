from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pypdf
import pytest
from PIL import Image

from documents import rendering
from documents.composition import PageSpec, Sources, TemplateError
from documents.rendering import (
    PdfEngine,
    RenderedPdf,
    engine_for,
    engine_info,
    harfbuzz_subsetting_available,
    render_pdf_inprocess,
    stamp,
)
from documents.sandbox import render_pdf

BRAND_FONT = Path("/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Bold.ttf")

STATEMENT = Sources(
    print_html=(
        "<h1>Statement for {{ customer.name }}</h1>"
        "<table>{% for line in lines %}<tr><td>{{ line.date|date('short') }}</td>"
        "<td>{{ line.text }}</td><td>{{ line.amount|money('GBP') }}</td></tr>{% endfor %}</table>"
    ),
    print_css="h1 { font-size: 18pt } td { padding: 2pt 6pt }",
    static_sections={"terms.html": "<h2>Terms and conditions</h2><p>Fixed wording.</p>"},
)
STATEMENT_DATA = {
    "customer": {"name": "Ann Example"},
    "lines": [
        {"date": f"2024-03-{day:02d}", "text": f"Payment {day}", "amount": day * 10.5}
        for day in range(1, 29)
    ],
}


def pdf_reader(data: bytes) -> pypdf.PdfReader:
    return pypdf.PdfReader(io.BytesIO(data))


def page_texts(data: bytes) -> list[str]:
    return [page.extract_text() for page in pdf_reader(data).pages]


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_harfbuzz_subsetting_is_available():
    assert harfbuzz_subsetting_available() is True


def test_engine_info_names_the_whole_toolchain():
    info = engine_info()

    assert info["weasyprint"] == "70.0"
    assert info["harfbuzz_subset"] is True
    assert info["pango"].count(".") == 2
    assert len(info["fonts"]) == 64
    assert set(info) == {"weasyprint", "pydyf", "pango", "harfbuzz_subset", "fonts"}


def test_letter_text_and_static_insert_are_in_the_pdf():
    pdf = render_pdf_inprocess(sources=STATEMENT, locale="en_GB", data=STATEMENT_DATA)

    texts = page_texts(pdf.data)
    assert pdf.page_count == len(texts) == 2
    assert "Statement for Ann Example" in texts[0]
    assert "£294.00" in texts[0]
    assert texts[-1].startswith("Terms and conditions")


@pytest.mark.parametrize(
    ("size", "width", "height"),
    [("A4", 595.28, 841.89), ("A5", 419.53, 595.28), ("letter", 612, 792)],
)
def test_page_size_comes_from_the_page_spec(size, width, height):
    sources = Sources(print_html="<p>x</p>", page=PageSpec(size=size, margin="10mm"))

    pdf = render_pdf_inprocess(sources=sources, locale="en_GB", data={})

    box = pdf_reader(pdf.data).pages[0].mediabox
    assert float(box.width) == pytest.approx(width, abs=0.1)
    assert float(box.height) == pytest.approx(height, abs=0.1)


def test_page_spec_cannot_inject_css():
    sources = Sources(print_html="<p>x</p>", page=PageSpec(size="A4; } body { display: none"))

    with pytest.raises(TemplateError, match=r"page size .* is not a plain CSS value"):
        render_pdf_inprocess(sources=sources, locale="en_GB", data={})


def test_static_insert_is_laid_out_once_per_letter_length_and_appended_to_every_document(
    monkeypatch,
):
    # given a spy on the static layout
    calls = []
    original = PdfEngine._layout_static

    def spy(self, letter_pages):
        calls.append(letter_pages)
        return original(self, letter_pages)

    monkeypatch.setattr(PdfEngine, "_layout_static", spy)
    sources = Sources(
        print_html="<p>Dear {{ name }}</p>",
        static_sections={"a.html": "<p>Insert A</p>", "b.html": "<p>Insert B</p>"},
    )

    # when three one-page letters are rendered
    pdfs = [
        render_pdf_inprocess(sources=sources, locale="en_GB", data={"name": name})
        for name in ("Ann", "Bob", "Cy")
    ]

    # then
    assert calls == [1]
    for pdf, name in zip(pdfs, ("Ann", "Bob", "Cy"), strict=True):
        assert page_texts(pdf.data) == [f"Dear {name}", "Insert A", "Insert B"]
        assert pdf.page_count == 3


def test_page_counter_counts_the_static_inserts_as_pages_of_the_document():
    # given a footer counter and a two-page insert after letters of one and of two pages
    sources = Sources(
        print_html=(
            "{% for n in range(pages) %}<p class='p'>Letter page {{ n + 1 }}</p>{% endfor %}"
        ),
        print_css=(
            "@page { @bottom-right { content: 'Page ' counter(page) ' of ' counter(pages) } }"
            ".p + .p { break-before: page }"
        ),
        static_sections={
            "terms.html": "<p>Terms one</p><p style='break-before: page'>Terms two</p>"
        },
    )

    for letter_pages in (1, 2):
        # when
        pdf = render_pdf_inprocess(sources=sources, locale="en_GB", data={"pages": letter_pages})

        # then every page, letter and insert, counts the whole document
        texts = page_texts(pdf.data)
        total = letter_pages + 2
        assert pdf.page_count == len(texts) == total
        for number, text in enumerate(texts, 1):
            assert f"Page {number} of {total}" in text
        assert "Terms one" in texts[letter_pages]
        assert "Terms two" in texts[-1]


def test_static_sections_see_no_customer_data():
    sources = Sources(print_html="<p>x</p>", static_sections={"s.html": "{{ customer.name }}"})

    with pytest.raises(TemplateError, match=r"static:s\.html line 1: 'customer' is undefined"):
        render_pdf_inprocess(sources=sources, locale="en_GB", data={"customer": {"name": "A"}})


def test_rendering_is_deterministic_in_process_and_in_the_worker():
    first = render_pdf_inprocess(sources=STATEMENT, locale="en_GB", data=STATEMENT_DATA)
    second = render_pdf_inprocess(sources=STATEMENT, locale="en_GB", data=STATEMENT_DATA)
    isolated = render_pdf(sources=STATEMENT, locale="en_GB", data=STATEMENT_DATA)

    assert first.data == second.data == isolated.data
    assert isolated.page_count == first.page_count
    trailer = pdf_reader(first.data).trailer
    assert "/ID" in trailer
    info = pdf_reader(first.data).metadata
    assert "/CreationDate" not in info
    assert "/ModDate" not in info
    assert info["/Producer"] == rendering.PRODUCER


def test_letter_without_static_pages_is_deterministic():
    sources = Sources(print_html="<p>{{ n }}</p>")

    first = render_pdf_inprocess(sources=sources, locale="en_GB", data={"n": 1})
    again = render_pdf(sources=sources, locale="en_GB", data={"n": 1})

    assert first.data == again.data
    assert b"/ID [" in first.data
    assert b"/CreationDate" not in first.data


def test_stamp_marks_every_page_and_is_deterministic():
    pdf = render_pdf_inprocess(sources=STATEMENT, locale="en_GB", data=STATEMENT_DATA)
    assert not any("DUPLICATE" in text for text in page_texts(pdf.data))

    stamped = stamp(pdf.data, "DUPLICATE")

    texts = page_texts(stamped)
    assert len(texts) == pdf.page_count
    assert all("DUPLICATE" in text for text in texts)
    assert "Statement for Ann Example" in texts[0]
    assert stamp(pdf.data, "DUPLICATE") == stamped


def test_stamp_fits_other_page_sizes():
    pdf = render_pdf_inprocess(
        sources=Sources(print_html="<p>x</p>", page=PageSpec(size="A5 landscape")),
        locale="en_GB",
        data={},
    )

    stamped = stamp(pdf.data, "PROOF")

    page = pdf_reader(stamped).pages[0]
    assert float(page.mediabox.width) == pytest.approx(595.28, abs=0.1)
    assert "PROOF" in page.extract_text()


def test_render_pdf_with_watermark_matches_in_process():
    isolated = render_pdf(sources=STATEMENT, locale="en_GB", data=STATEMENT_DATA, watermark="PROOF")
    local = render_pdf_inprocess(
        sources=STATEMENT, locale="en_GB", data=STATEMENT_DATA, watermark="PROOF"
    )

    assert isolated == local
    assert all("PROOF" in text for text in page_texts(isolated.data))


def test_asset_image_and_font_are_embedded():
    sources = Sources(
        print_html="<p class='brand'>Brand text</p><img src='asset:logo.png'>",
        print_css=(
            "@font-face { font-family: Brand; src: url(asset:brand.ttf) }"
            ".brand { font-family: Brand }"
        ),
        assets={"logo.png": png_bytes(), "brand.ttf": BRAND_FONT.read_bytes()},
    )

    pdf = render_pdf(sources=sources, locale="en_GB", data={})

    page = pdf_reader(pdf.data).pages[0]
    assert [image.image.size for image in page.images] == [(40, 20)]
    fonts = [font.get_object()["/BaseFont"] for font in page["/Resources"]["/Font"].values()]
    # WeasyPrint names an embedded @font-face font after its family; a fallback system font
    # would be called DejaVu or Liberation
    assert any(name.endswith("+Brand-Bold-Condensed") for name in fonts)
    assert "Brand text" in page.extract_text()


def test_chart_svg_is_drawn():
    def render(body: str) -> pypdf.PageObject:
        sources = Sources(print_html=f"<p>Usage</p>{body}")
        pdf = render_pdf_inprocess(sources=sources, locale="en_GB", data={})
        return pdf_reader(pdf.data).pages[0]

    plain = render("")
    charted = render("{{ chart('bar', ['Jan', 'Feb', 'Mar'], [3, 5, 2], title='kWh per month') }}")

    # the bars, axes and labels are real drawing operations in the page's content stream
    drawn = charted.get_contents().get_data()
    assert len(drawn) > len(plain.get_contents().get_data()) + 1500
    assert b" re\n" in drawn  # rectangles: the bars and the plot background
    assert "kWh per month" in charted.extract_text()


def test_template_errors_come_back_from_the_worker_unchanged():
    with pytest.raises(TemplateError) as caught:
        render_pdf(sources=Sources(print_html="\n{{ missing }}"), locale="en_GB", data={})

    assert caught.value.reason == "print.html line 2: 'missing' is undefined"


def test_engine_is_cached_per_sources_and_locale():
    sources = Sources(print_html="<p>cache me</p>")

    assert engine_for(sources, locale="en_GB") is engine_for(sources, locale="en_GB")
    assert engine_for(sources, locale="de_DE") is not engine_for(sources, locale="en_GB")


def test_rendered_pdf_counts_pages():
    sources = Sources(
        print_html="{% for i in range(3) %}<p style='break-after: page'>{{ i }}</p>{% endfor %}"
    )

    pdf = render_pdf(sources=sources, locale="en_GB", data={})

    assert pdf == RenderedPdf(data=pdf.data, page_count=len(pdf_reader(pdf.data).pages))
    assert pdf.page_count >= 3


def test_concurrent_callers_share_the_worker_safely():
    sources = Sources(print_html="<p>Dear {{ name }}</p>", static_sections={"t.html": "<p>T</p>"})
    names = [f"Customer {i}" for i in range(6)]

    with ThreadPoolExecutor(max_workers=3) as pool:
        pdfs = list(
            pool.map(
                lambda name: render_pdf(sources=sources, locale="en_GB", data={"name": name}),
                names,
            )
        )

    assert [page_texts(pdf.data)[0] for pdf in pdfs] == [f"Dear {name}" for name in names]
