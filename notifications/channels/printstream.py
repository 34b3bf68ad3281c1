"""The print stream and manifest of a batch: what the mail house prints and checks.

The stream is one PDF: for every item in sequence, a cover sheet (its address shows through the
window of a DL/C5 envelope, and the mail house's control mark, a QR or DataMatrix code naming
the batch, the sequence and the pages in the envelope, or OMR marks with the sequence and the
sheets, lets its inserter check every envelope) followed by the
archived document, whose bytes are checked against
the SHA-256 recorded when it was archived. The manifest is a CSV with one row per item.

Batches run to thousands of letters, so nothing here holds the whole batch: `PdfStreamWriter`
copies each source PDF's objects into the output file as it goes (pypdf's PdfWriter keeps every
merged page in memory until it writes), documents are read one at a time, and cover sheets are
rendered a chunk at a time.
"""

from __future__ import annotations

import base64
import csv
import gc
import hashlib
import io
import re
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from html import escape
from typing import IO, Any

import pypdf
import segno
import weasyprint
import zxingcpp
from django.conf import settings
from django.db.models import QuerySet
from pypdf.errors import PyPdfError
from pypdf.generic import (
    ArrayObject,
    ByteStringObject,
    DictionaryObject,
    IndirectObject,
    NameObject,
    NullObject,
    NumberObject,
    PdfObject,
    StreamObject,
    TextStringObject,
)

from documents.rendering import PRODUCER, SafeURLFetcher
from notifications.models import PrintItem

# Cover sheets rendered per WeasyPrint call: one layout pass and one embedded font for many
# sheets, while memory stays bounded.
COVER_CHUNK = 100
# A document bigger than this is spooled to disk while its hash is checked.
SPOOL_MAX_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 1024 * 1024


class PrintError(ValueError):
    """A print batch step was refused; the message says what is wrong and what to do.

    `code` tells callers what kind of refusal it is (the API maps it to a status)."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.code = code


# --- streaming PDF concatenation --------------------------------------------------------------


class PdfStreamWriter:
    """Writes one PDF made of pages of many others, copying each source's objects to `out` as
    soon as a page is added, so memory holds one source at a time (plus 8 bytes per object
    written, for the cross-reference table).

    Object 1 is the catalog and object 2 the page tree, both written by `finish()`.
    """

    _CATALOG, _PAGES = 1, 2
    # pypdf's readers are reference cycles (objects point back at their reader), which only
    # the cyclic collector frees; left to its own pace, dead readers pile up in its oldest
    # generation. Collecting every so many sources keeps the memory flat for any batch size.
    COLLECT_EVERY = 50

    def __init__(self, out: IO[bytes]):
        self._out = out
        self._position = 0
        # Offset of object n at index n (0 is the free list's head); objects are numbered in
        # the order they are allocated but written in the order they are reached.
        self._offsets = array("Q", [0, 0, 0])
        self._kids = array("Q")
        self._sources = 0
        # The header's second line has bytes above 127, so transfer tools treat it as binary.
        self._write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")

    @property
    def page_count(self) -> int:
        return len(self._kids)

    def source(self, reader: pypdf.PdfReader) -> PdfSource:
        self._sources += 1
        if self._sources % self.COLLECT_EVERY == 0:
            gc.collect()
        return PdfSource(self, reader)

    def finish(self, *, title: str, seed: bytes) -> None:
        """Write the page tree, catalog, info, cross-reference table and trailer."""
        # The page tree is written by hand: its /Kids runs to one entry per page.
        self._offsets[self._PAGES] = self._position
        self._write(b"%d 0 obj\n<< /Type /Pages /Count %d /Kids [" % (self._PAGES, len(self._kids)))
        for start in range(0, len(self._kids), 1000):
            self._write(b"".join(b"%d 0 R " % n for n in self._kids[start : start + 1000]))
        self._write(b"] >>\nendobj\n")
        catalog = DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Catalog"),
                NameObject("/Pages"): self._reference(self._PAGES),
            }
        )
        self._emit(self._CATALOG, catalog)
        info_number = self._allocate()
        info = DictionaryObject(
            {
                NameObject("/Title"): TextStringObject(title),
                NameObject("/Producer"): TextStringObject(PRODUCER),
            }
        )
        self._emit(info_number, info)
        xref_at = self._position
        size = len(self._offsets)
        self._write(b"xref\n0 %d\n0000000000 65535 f \n" % size)
        for start in range(1, size, 1000):
            chunk = self._offsets[start : start + 1000]
            self._write(b"".join(b"%010d 00000 n \n" % offset for offset in chunk))
        # Same inputs, same /ID: a stream produced again can be compared byte for byte.
        identifier = ByteStringObject(hashlib.md5(seed, usedforsecurity=False).digest())
        trailer = DictionaryObject(
            {
                NameObject("/Size"): NumberObject(size),
                NameObject("/Root"): self._reference(self._CATALOG),
                NameObject("/Info"): self._reference(info_number),
                NameObject("/ID"): ArrayObject([identifier, identifier]),
            }
        )
        self._write(b"trailer\n" + _serialised(trailer))
        self._write(b"\nstartxref\n%d\n%%%%EOF\n" % xref_at)

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._position += len(data)

    def _allocate(self) -> int:
        self._offsets.append(0)
        return len(self._offsets) - 1

    def _add_kid(self, number: int) -> None:
        self._kids.append(number)

    @staticmethod
    def _reference(number: int) -> IndirectObject:
        return IndirectObject(number, 0, None)  # type: ignore[arg-type]

    def _emit(self, number: int, obj: PdfObject) -> None:
        self._offsets[number] = self._position
        self._write(b"%d 0 obj\n" % number + _serialised(obj) + b"\nendobj\n")


def _serialised(obj: PdfObject) -> bytes:
    buffer = io.BytesIO()
    obj.write_to_stream(buffer)
    return buffer.getvalue()


class PdfSource:
    """The pages of one reader being copied into a `PdfStreamWriter`. Objects the pages share
    (fonts, images) are written once per source, however many of its pages are added."""

    def __init__(self, writer: PdfStreamWriter, reader: pypdf.PdfReader):
        self._writer = writer
        self._reader = reader
        self._numbers: dict[tuple[int, int], int] = {}
        self._pending: list[tuple[int, PdfObject]] = []

    def add_pages(self, indexes: Iterable[int] | None = None) -> int:
        """Append these pages (all by default) to the output; returns how many."""
        pages = self._reader.pages
        chosen = [pages[i] for i in (range(len(pages)) if indexes is None else indexes)]
        added = set()
        for page in chosen:
            # The flattened page, not the raw object: pypdf has copied the attributes it
            # inherits from the source's page tree (MediaBox, Resources) into it.
            number = self._writer._allocate()
            if (ref := page.indirect_reference) is not None:
                self._numbers[(ref.idnum, ref.generation)] = number
            self._writer._add_kid(number)
            self._pending.append((number, page))
            added.add(number)
        while self._pending:
            number, obj = self._pending.pop()
            copied = self._copy(obj)
            if number in added:
                copied[NameObject("/Parent")] = self._writer._reference(self._writer._PAGES)
            self._writer._emit(number, copied)
        return len(chosen)

    def _copy(self, obj: Any) -> Any:
        if isinstance(obj, IndirectObject):
            return self._copy_reference(obj)
        if isinstance(obj, StreamObject):
            stream = obj.__class__()
            # Still encoded: copied as it is, never decompressed.
            stream._data = obj._data
            for key, value in obj.items():
                if key != "/Length":  # written from the data; it may be an indirect object
                    stream[NameObject(key)] = self._copy(value)
            return stream
        if isinstance(obj, DictionaryObject):
            return DictionaryObject({NameObject(k): self._copy(v) for k, v in obj.items()})
        if isinstance(obj, ArrayObject):
            return ArrayObject(self._copy(v) for v in obj)
        return obj  # numbers, names, strings, booleans, null: immutable

    def _copy_reference(self, ref: IndirectObject) -> PdfObject:
        key = (ref.idnum, ref.generation)
        if key not in self._numbers:
            target = ref.get_object()
            # The source's page tree and catalog stay behind (a page's /Parent, outlines
            # pointing home): the output has its own. A reference to nothing is null in PDF.
            if target is None or (
                isinstance(target, DictionaryObject)
                and target.get("/Type") in ("/Pages", "/Catalog")
            ):
                return NullObject()
            self._numbers[key] = self._writer._allocate()
            self._pending.append((self._numbers[key], target))
        return self._writer._reference(self._numbers[key])


# --- cover sheets -------------------------------------------------------------------------

# The window sits where the house letter puts it (20 mm from the left, 45 mm from the top,
# 88 x 38 mm), which a DL or C5 window envelope shows.
COVER_CSS = """
@page { size: A4; margin: 0 }
html, body { margin: 0 }
body { font-family: "Liberation Sans", "DejaVu Sans", sans-serif; color: #000 }
.sheet { position: relative; width: 210mm; height: 297mm; overflow: hidden }
.sheet + .sheet { break-before: page }
.window { position: absolute; top: 45mm; left: 20mm; width: 88mm; height: 38mm;
          overflow: hidden }
.return { font-size: 6.3pt; border-bottom: 0.3pt solid #000; padding-bottom: 0.6mm;
          margin-bottom: 2mm; display: inline-block }
.recipient { font-size: 10pt; line-height: 1.32 }
.run { position: absolute; top: 110mm; left: 20mm; right: 20mm; font-size: 9pt }
.run .ref { font-size: 16pt; font-weight: bold; margin: 0 0 3mm 0 }
.run table { border-collapse: collapse }
.run th { text-align: left; font-weight: normal; padding: 0.6mm 6mm 0.6mm 0 }
.run td { padding: 0.6mm 0 }
.mark { position: absolute; display: block }
.mark-text { position: absolute; font-size: 6pt; white-space: nowrap }
.omr { position: absolute; background: #000 }
"""
CONTROL_MARKS = ("qr", "datamatrix", "omr", "none")

# OMR marks: a track of dashes down the sheet, one position every 1/6 inch (the usual inserter
# read-head pitch), each mark `size` mm long and OMR_THICKNESS_MM thick. Positions, top first:
#   0          start mark (always dark)
#   1 - 8      sheets in the envelope, cover sheet included (binary, most significant first)
#   9 - 24     sequence in the batch, modulo 65,536 (binary, most significant first)
#   25         parity: dark when that makes the number of dark marks from 0 to 25 even
#   26         stop mark (always dark)
OMR_PITCH_MM = 25.4 / 6
OMR_THICKNESS_MM = 0.6
OMR_SHEET_BITS = 8
OMR_SEQUENCE_BITS = 16


def omr_marks(*, sequence: int, sheets: int) -> list[bool]:
    """Which OMR positions are dark for one envelope (the layout above)."""
    if not 1 <= sheets < 2**OMR_SHEET_BITS:
        raise PrintError(
            f"An envelope of {sheets} sheets cannot be marked with OMR (at most "
            f"{2**OMR_SHEET_BITS - 1})",
            code="control_mark_setting",
        )

    def bits(value: int, width: int) -> list[bool]:
        return [bool(value >> shift & 1) for shift in range(width - 1, -1, -1)]

    data = [
        True,
        *bits(sheets, OMR_SHEET_BITS),
        *bits(sequence % 2**OMR_SEQUENCE_BITS, OMR_SEQUENCE_BITS),
    ]
    return [*data, sum(data) % 2 == 1, True]


def _datamatrix_svg_uri(payload: str) -> str:
    """A DataMatrix (ECC 200) symbol as a vector image, with a quiet zone of one module."""
    svg = zxingcpp.create_barcode(payload, zxingcpp.BarcodeFormat.DataMatrix).to_svg(
        add_quiet_zones=True
    )
    # Zint writes width and height in modules but no viewBox: without one the symbol would not
    # scale to the mark's size.
    svg = re.sub(
        r'<svg width="(\d+)" height="(\d+)"',
        r'<svg viewBox="0 0 \1 \2" width="\1" height="\2" shape-rendering="crispEdges"',
        svg,
        count=1,
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


@dataclass(frozen=True)
class ControlMark:
    """The mail house's control mark (settings CCM_PRINT_CONTROL_MARK*): what it encodes for an
    envelope, and where it sits on the cover sheet. A 2D code (QR or DataMatrix) carries the
    text of `payload`; OMR marks carry the sequence and the sheets in the envelope."""

    kind: str
    template: str
    left_mm: float
    top_mm: float
    size_mm: float

    @classmethod
    def from_settings(cls) -> ControlMark:
        kind = settings.CCM_PRINT_CONTROL_MARK
        if kind not in CONTROL_MARKS:
            raise PrintError(
                f"CCM_PRINT_CONTROL_MARK is {kind!r}; use one of {', '.join(CONTROL_MARKS)}",
                code="control_mark_setting",
            )
        try:
            left, top, size = (float(v) for v in settings.CCM_PRINT_CONTROL_MARK_AT.split(","))
        except ValueError as exc:
            raise PrintError(
                f"CCM_PRINT_CONTROL_MARK_AT is {settings.CCM_PRINT_CONTROL_MARK_AT!r}; write "
                '"left,top,size" in millimetres, e.g. "170,12,24"',
                code="control_mark_setting",
            ) from exc
        return cls(kind, settings.CCM_PRINT_CONTROL_MARK_FORMAT, left, top, size)

    def payload(self, *, batch: str, sequence: int, items: int, pages: int) -> str:
        """The text of the mark for one envelope: the cover sheet plus `pages` document pages."""
        try:
            return self.template.format(
                batch=batch, sequence=sequence, items=items, pages=pages, sheets=pages + 1
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise PrintError(
                f"CCM_PRINT_CONTROL_MARK_FORMAT {self.template!r} cannot be filled in ({exc}); "
                "it may name {batch}, {sequence}, {items}, {pages} and {sheets}",
                code="control_mark_setting",
            ) from exc

    def html(self, payload: str, *, sequence: int, sheets: int) -> str:
        if self.kind == "none":
            return ""
        if self.kind == "omr":
            dashes = "".join(
                f'<div class="omr" style="left: {self.left_mm}mm; '
                f"top: {self.top_mm + i * OMR_PITCH_MM:.3f}mm; width: {self.size_mm}mm; "
                f'height: {OMR_THICKNESS_MM}mm"></div>'
                for i, dark in enumerate(omr_marks(sequence=sequence, sheets=sheets))
                if dark
            )
            track = (1 + OMR_SHEET_BITS + OMR_SEQUENCE_BITS + 2) * OMR_PITCH_MM
            below = f"left: {self.left_mm}mm; top: {self.top_mm + track:.3f}mm"
            return f'{dashes}<div class="mark-text" style="{below}">{escape(payload)}</div>'
        if self.kind == "datamatrix":
            uri = _datamatrix_svg_uri(payload)
        else:
            # Vector modules, with the quiet zone the standard asks for (4 modules) kept white.
            uri = segno.make_qr(payload, error="m").svg_data_uri(border=4)
        place = f"left: {self.left_mm}mm; top: {self.top_mm}mm"
        below = f"left: {self.left_mm}mm; top: {self.top_mm + self.size_mm + 0.5}mm"
        return (
            f'<img class="mark" alt="" src="{uri}" '
            f'style="{place}; width: {self.size_mm}mm; height: {self.size_mm}mm">'
            f'<div class="mark-text" style="{below}">{escape(payload)}</div>'
        )


def _cover_html(
    item: PrintItem, *, reference: str, total: int, return_address: str, mark: ControlMark
) -> str:
    lines = "<br>".join(escape(line) for line in [item.recipient_name, *item.postal_address])
    returns = f'<div class="return">{escape(return_address)}</div>' if return_address else ""
    payload = mark.payload(batch=reference, sequence=item.sequence, items=total, pages=item.pages)
    return (
        '<section class="sheet">'
        f"{mark.html(payload, sequence=item.sequence, sheets=item.pages + 1)}"
        f'<div class="window">{returns}<div class="recipient">{lines}</div></div>'
        '<div class="run">'
        f'<p class="ref">{escape(reference)} / {item.sequence}</p>'
        "<table>"
        f"<tr><th>Item</th><td>{item.sequence} of {total}</td></tr>"
        f"<tr><th>Pages that follow</th><td>{item.pages}</td></tr>"
        f"<tr><th>Customer reference</th><td>{escape(item.customer.external_ref)}</td></tr>"
        f"<tr><th>Document SHA-256</th><td>{item.document_sha256[:16]}…</td></tr>"
        "</table></div></section>"
    )


def cover_sheets(items: Sequence[PrintItem], *, reference: str, total: int) -> pypdf.PdfReader:
    """One page per item, in the order given."""
    return_address = settings.CCM_PRINT_RETURN_ADDRESS
    mark = ControlMark.from_settings()
    body = "".join(
        _cover_html(
            item, reference=reference, total=total, return_address=return_address, mark=mark
        )
        for item in items
    )
    html = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<style>{COVER_CSS}</style></head><body>{body}</body></html>"
    )
    # Our own markup with escaped customer data; the fetcher still refuses every URL.
    data = weasyprint.HTML(string=html, url_fetcher=SafeURLFetcher()).write_pdf()
    reader = pypdf.PdfReader(io.BytesIO(data))
    if len(reader.pages) != len(items):  # a sheet that overflowed would shift every letter
        raise PrintError(
            f"{reference}: the cover sheets came out as {len(reader.pages)} pages for "
            f"{len(items)} items",
            code="cover_sheet_layout",
        )
    return reader


# --- archived documents, checked -------------------------------------------------------------


def _label(item: PrintItem, reference: str) -> str:
    return f"{reference}/{item.sequence} ({item.recipient_name}, document {item.document_id})"


@contextmanager
def verified_document(item: PrintItem, *, reference: str) -> Iterator[pypdf.PdfReader]:
    """The item's archived PDF, read once and hashed as it is read: what gets printed is exactly
    the bytes whose SHA-256 matches the archive's record."""
    document = item.document
    digest = hashlib.sha256()
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
        try:
            with document.file.open("rb") as archived:
                while chunk := archived.read(_READ_CHUNK):
                    digest.update(chunk)
                    spool.write(chunk)
        except (FileNotFoundError, ValueError) as exc:
            raise PrintError(
                f"{_label(item, reference)}: the archived file {document.file.name!r} cannot be "
                f"read ({exc}); restore it from backup, then close the batch again",
                code="document_missing",
            ) from exc
        actual = digest.hexdigest()
        if actual != document.sha256 or actual != item.document_sha256:
            raise PrintError(
                f"{_label(item, reference)}: the archived file does not match its recorded "
                f"SHA-256 (recorded {item.document_sha256}, file {actual}); it was changed after "
                "archiving and must not be printed; investigate, restore the archived bytes "
                "from backup, then close the batch again",
                code="document_mismatch",
            )
        spool.seek(0)
        try:
            yield pypdf.PdfReader(spool)
        except PyPdfError as exc:
            raise PrintError(
                f"{_label(item, reference)}: the archived PDF cannot be read: {exc}",
                code="document_unreadable",
            ) from exc


# --- the stream and manifest of a batch ---------------------------------------------------


def manifest_header(address_lines: int) -> list[str]:
    return [
        "sequence",
        "customer_reference",
        "customer_name",
        *(f"address_line_{n}" for n in range(1, address_lines + 1)),
        "pages",
        "document_sha256",
        "stream_first_page",
    ]


@dataclass(frozen=True)
class BuiltStream:
    stream_sha256: str
    manifest_sha256: str
    page_count: int


def _sha256_of(file: IO[bytes]) -> str:
    file.seek(0)
    digest = hashlib.sha256()
    while chunk := file.read(_READ_CHUNK):
        digest.update(chunk)
    file.seek(0)
    return digest.hexdigest()


def _chunks(items: QuerySet[PrintItem], size: int) -> Iterator[list[PrintItem]]:
    chunk: list[PrintItem] = []
    for item in items.iterator(chunk_size=size):
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str) -> str:
    """A text cell a spreadsheet will not run: the mail house opens manifests in Excel, and a
    name or address line starting like a formula (=HYPERLINK(…)) would be executed (OWASP CSV
    injection); a leading apostrophe makes it text."""
    value = str(value)
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def stream_build(
    *,
    reference: str,
    items: QuerySet[PrintItem],
    stream: IO[bytes],
    manifest: IO[bytes],
    on_progress: Callable[[int, int], None] | None = None,
) -> BuiltStream:
    """Write the print stream and manifest of `items` (in sequence order) to the two files.
    Raises PrintError naming the first item whose archived document cannot be printed exactly
    as it was archived. `on_progress(done, total)` is told after each chunk of letters."""
    items = items.select_related("customer", "document").order_by("sequence")
    total = items.count()
    address_lines = max((len(a) for a in items.values_list("postal_address", flat=True)), default=0)
    writer = PdfStreamWriter(stream)
    text = io.TextIOWrapper(manifest, encoding="utf-8", newline="")
    rows = csv.writer(text)
    rows.writerow(manifest_header(address_lines))
    done = 0
    for chunk in _chunks(items, COVER_CHUNK):
        covers = writer.source(cover_sheets(chunk, reference=reference, total=total))
        for index, item in enumerate(chunk):
            first_page = writer.page_count + 1
            covers.add_pages([index])
            with verified_document(item, reference=reference) as reader:
                pages = writer.source(reader).add_pages()
            if pages != item.pages:  # the cover sheet and manifest would mislead the mail house
                raise PrintError(
                    f"{_label(item, reference)}: the document has {pages} pages, recorded as "
                    f"{item.pages}",
                    code="document_pages",
                )
            address = [csv_cell(line) for line in item.postal_address] + [""] * address_lines
            rows.writerow(
                [
                    item.sequence,
                    csv_cell(item.customer.external_ref),
                    csv_cell(item.recipient_name),
                    *address[:address_lines],
                    item.pages,
                    item.document_sha256,
                    first_page,
                ]
            )
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, total)
    writer.finish(title=f"Print stream {reference}", seed=reference.encode())
    text.flush()
    text.detach()  # the caller's file stays open
    return BuiltStream(
        stream_sha256=_sha256_of(stream),
        manifest_sha256=_sha256_of(manifest),
        page_count=writer.page_count,
    )
