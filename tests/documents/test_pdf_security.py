"""Hostile templates and data against the PDF path: nothing is read, fetched or allowed to hang."""

from __future__ import annotations

import builtins
import io
import logging
import os
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pypdf
import pytest
from PIL import Image

from documents.composition import Sources, TemplateError
from documents.rendering import (
    Limits,
    RenderedPdf,
    RenderError,
    RenderLimitExceeded,
    render_pdf_inprocess,
)
from documents.sandbox import render_pdf

SMALL = Limits(timeout_s=10, memory_mb=700)


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)


@pytest.fixture
def opened(monkeypatch):
    """Every path the rendering process opens while the test runs."""
    paths: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        paths.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        paths.append(str(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return paths


@pytest.fixture
def connections(monkeypatch):
    """Every outgoing connection attempted in this process; none is allowed through."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture
def secret_files(tmp_path):
    """Real files with recognisable content, so a leak would show in the PDF."""
    css = tmp_path / "leak.css"
    css.write_text('p::after { content: "LEAKED-CSS" }')
    png = tmp_path / "leak.png"
    Image.new("RGB", (30, 30), (0, 0, 255)).save(png)
    txt = tmp_path / "leak.txt"
    txt.write_text("LEAKED-ATTACHMENT")
    return {"css": css.as_uri(), "png": png.as_uri(), "txt": txt.as_uri()}


@pytest.fixture
def counting_server():
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/css")
            self.end_headers()
            self.wfile.write(b'p::after { content: "FETCHED" }')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_file_urls_are_not_read_in_the_worker(secret_files, caplog):
    # given a template pointing at real local files in every way WeasyPrint could load them
    sources = Sources(
        print_html=(
            f"<style>@import url({secret_files['css']});</style>"
            f"<p>Letter</p><img src='{secret_files['png']}'>"
            f"<link rel='attachment' href='{secret_files['txt']}'>"
            "<img src='file:///etc/passwd'>"
        ),
        print_css=f"@import url({secret_files['css']}); @import url(file:///etc/passwd);",
    )

    # when
    with caplog.at_level(logging.WARNING):
        pdf = render_pdf(sources=sources, locale="en_GB", data={}, limits=SMALL)

    # then nothing of the files made it into the PDF
    reader = pypdf.PdfReader(io.BytesIO(pdf.data))
    assert pdf_text(pdf.data).strip() == "Letter"
    assert len(reader.pages[0].images) == 0
    assert reader.attachments == {}
    assert b"/EmbeddedFiles" not in pdf.data
    assert b"LEAKED" not in pdf.data
    refused = [r.getMessage() for r in caplog.records if "refused to fetch" in r.getMessage()]
    assert any("leak.css" in message for message in refused)
    assert any("leak.png" in message for message in refused)
    assert any("leak.txt" in message for message in refused)
    assert any("file:///etc/passwd" in message for message in refused)


@pytest.mark.parametrize(
    "html",
    [
        "<img src='file:///etc/passwd'>",
        "<style>@import url(file:///etc/passwd);</style>",
        "<link rel='attachment' href='file:///etc/passwd'>",
        "<link rel='stylesheet' href='file:///etc/passwd'>",
        "<img src='/etc/passwd'>",
        "<img src='../../../../etc/passwd'>",
        "<base href='file:///etc/'><img src='passwd'><link rel='attachment' href='passwd'>",
        "<img src='ftp://127.0.0.1/passwd'>",
        "<img src='gopher://127.0.0.1/passwd'>",
        "<img src='jar:file:///etc/passwd!/x'>",
        "<style>@font-face { font-family: X; src: url(file:///etc/passwd) }"
        " p { font-family: X }</style>",
        "<svg width='10' height='10'>"
        "<image href='file:///etc/passwd' width='10' height='10'/></svg>",
    ],
)
def test_no_local_path_is_opened(html, opened, connections):
    pdf = render_pdf_inprocess(
        sources=Sources(print_html=f"<p>Letter</p>{html}"), locale="en_GB", data={}
    )

    assert pdf_text(pdf.data).strip() == "Letter"
    assert b"/EmbeddedFiles" not in pdf.data
    assert not [path for path in opened if "passwd" in path]
    assert connections == []


def test_css_import_of_local_file_in_print_css_is_not_opened(opened):
    sources = Sources(print_html="<p>Letter</p>", print_css="@import url(file:///etc/passwd);")

    pdf = render_pdf_inprocess(sources=sources, locale="en_GB", data={})

    assert pdf_text(pdf.data).strip() == "Letter"
    assert not [path for path in opened if "passwd" in path]


def test_cloud_metadata_endpoint_is_never_connected_to(connections, caplog):
    sources = Sources(
        print_html=(
            "<p>Letter</p><img src='http://169.254.169.254/latest/meta-data/'>"
            "<style>@import url(https://169.254.169.254/x.css);</style>"
            "<link rel='attachment' href='http://169.254.169.254/latest/user-data'>"
        ),
        print_css="p { background: url(http://169.254.169.254/latest/meta-data/iam) }",
    )

    with caplog.at_level(logging.WARNING):
        pdf = render_pdf_inprocess(sources=sources, locale="en_GB", data={})

    assert connections == []
    assert pdf_text(pdf.data).strip() == "Letter"
    refused = [r.getMessage() for r in caplog.records if "refused to fetch" in r.getMessage()]
    assert len([m for m in refused if "169.254.169.254" in m]) == 4


def test_loopback_server_gets_no_request_from_the_worker(counting_server):
    base, hits = counting_server
    sources = Sources(
        print_html=(
            f"<p>Letter</p><img src='{base}/img.png'>"
            f"<link rel='stylesheet' href='{base}/link.css'>"
            f"<link rel='attachment' href='{base}/attachment.txt'>"
            f"<base href='{base}/'><img src='relative.png'>"
        ),
        print_css=f"@import url({base}/import.css); p {{ background: url({base}/bg.png) }}",
    )

    pdf = render_pdf(sources=sources, locale="en_GB", data={}, limits=SMALL)

    assert hits == []
    assert "FETCHED" not in pdf_text(pdf.data)
    # the server does answer, so zero hits means the renderer never asked
    urllib.request.urlopen(f"{base}/probe", timeout=5).read()  # noqa: S310 - loopback
    assert hits == ["/probe"]


@pytest.mark.parametrize("url", ["/dev/urandom", "file:///dev/urandom"])
def test_device_files_are_refused_quickly(url):
    sources = Sources(
        print_html=f"<p>Letter</p><img src='{url}'>",
        print_css=f"p {{ background: url({url}) }} @import url({url});",
    )
    started = time.monotonic()

    pdf = render_pdf(sources=sources, locale="en_GB", data={}, limits=SMALL)

    assert time.monotonic() - started < 5
    assert pdf_text(pdf.data).strip() == "Letter"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ namespace.__init__.__globals__ }}",
        "{% set x = [].append(1) %}",
        "{{ ''|attr('__class__') }}",
    ],
)
def test_sandbox_escapes_are_template_errors(template):
    with pytest.raises(TemplateError) as caught:
        render_pdf(sources=Sources(print_html=template), locale="en_GB", data={}, limits=SMALL)

    assert caught.value.reason.startswith("print.html line 1: not allowed in templates:")


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "../../etc/passwd", "address.html/../x"])
def test_only_the_versions_partials_can_be_included(name):
    sources = Sources(
        print_html=f"{{% include '{name}' %}}", partials={"address.html": "<p>Address</p>"}
    )

    with pytest.raises(TemplateError) as caught:
        render_pdf(sources=sources, locale="en_GB", data={}, limits=SMALL)

    assert (
        caught.value.reason
        == f"print.html: template {name!r} is not one of this version's partials"
    )


def test_huge_template_is_refused_quickly():
    started = time.monotonic()

    with pytest.raises(TemplateError, match=r"print\.html: template is larger than 2097152 chars"):
        render_pdf(
            sources=Sources(print_html="x" * (10 * 1024 * 1024)),
            locale="en_GB",
            data={},
            limits=SMALL,
        )

    assert time.monotonic() - started < 5


def test_absurd_page_size_finishes():
    sources = Sources(print_html="<p>Letter</p>", print_css="@page { size: 1e6cm }")
    started = time.monotonic()

    try:
        result: RenderedPdf | RenderError = render_pdf(
            sources=sources, locale="en_GB", data={}, limits=SMALL
        )
    except RenderLimitExceeded as exc:
        result = exc

    assert time.monotonic() - started < SMALL.timeout_s + 5
    if isinstance(result, RenderedPdf):
        assert pdf_text(result.data).strip() == "Letter"
    else:
        assert "limit" in result.reason


def test_deep_nesting_is_refused_with_a_reason_quickly():
    sources = Sources(print_html="<div>" * 100_000 + "deep" + "</div>" * 100_000)
    started = time.monotonic()

    with pytest.raises(RenderError) as caught:
        render_pdf(sources=sources, locale="en_GB", data={}, limits=SMALL)

    assert caught.value.reason == "the document nests elements more than 100 levels deep"
    assert time.monotonic() - started < 5


def test_reasonable_nesting_still_renders():
    sources = Sources(
        print_html="<div>" * 60
        + "<table><tr><td><p>nested</p><p>ok</td></tr></table>"
        + "</div>" * 60
    )

    pdf = render_pdf(sources=sources, locale="en_GB", data={}, limits=SMALL)

    assert "nested" in pdf_text(pdf.data)


def test_memory_bomb_hits_the_cap_and_the_next_render_works():
    # the sandbox lets a format width through; only the worker's memory cap stops it
    bomb = Sources(print_html="{{ '{:>900000000}'.format('x') }}")

    with pytest.raises(RenderLimitExceeded) as caught:
        render_pdf(
            sources=bomb, locale="en_GB", data={}, limits=Limits(timeout_s=10, memory_mb=600)
        )

    assert "600 MB memory limit" in caught.value.reason
    after = render_pdf(
        sources=Sources(print_html="<p>Still {{ s }}</p>"), locale="en_GB", data={"s": "here"}
    )
    assert pdf_text(after.data).strip() == "Still here"


def test_endless_template_hits_the_timeout_and_the_next_render_works():
    # Nested range loops are refused by the sandbox's iteration budget; this one stays under it
    # and spins on work that is small each time.
    spin = Sources(
        print_html=(
            "{% set s = 'ab' * 4000000 %}{% for i in range(1000) %}{% for j in range(900) %}"
            "{% if s.count('b') < 0 %}x{% endif %}{% endfor %}{% endfor %}"
        )
    )
    started = time.monotonic()

    with pytest.raises(RenderLimitExceeded) as caught:
        render_pdf(sources=spin, locale="en_GB", data={}, limits=Limits(timeout_s=1.5))

    assert caught.value.reason == "rendering took longer than the 1.5 s time limit"
    assert time.monotonic() - started < 4
    after = render_pdf(sources=Sources(print_html="<p>Back</p>"), locale="en_GB", data={})
    assert pdf_text(after.data).strip() == "Back"
