"""What a template may carry besides its text: images (PNG, JPEG, SVG) and fonts (TTF, OTF,
WOFF), stored in the version's content beside its files and served to the renderer only by
name ("asset:<name>", see documents.rendering.SafeURLFetcher).

The same checks hold whichever way an asset comes in (uploaded in the browser editor or read
from `assets/` of a folder in git): the name says the kind, the bytes must be of that kind,
each kind has a size limit, and an SVG must be a picture and nothing else. An SVG is refused
rather than cleaned: a cleaned copy would differ from the author's file without telling them,
and the reason for refusing names what to take out.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

# Extension → (what it is called to the author, its size limit in bytes).
IMAGE_LIMIT = 2 * MIB
FONT_LIMIT = 4 * MIB
KINDS = {
    "png": ("PNG image", IMAGE_LIMIT),
    "jpg": ("JPEG image", IMAGE_LIMIT),
    "jpeg": ("JPEG image", IMAGE_LIMIT),
    "svg": ("SVG image", IMAGE_LIMIT),
    "ttf": ("TrueType font", FONT_LIMIT),
    "otf": ("OpenType font", FONT_LIMIT),
    "woff": ("WOFF font", FONT_LIMIT),
}
# A raster image this large decodes to hundreds of megabytes in the render worker.
MAX_PIXELS = 25_000_000
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")

_SVG_NS = "{http://www.w3.org/2000/svg}"
_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
# Elements that run code, embed other documents or pull in HTML: never part of a picture.
_SVG_REFUSED = {"script", "foreignObject", "iframe", "embed", "object", "handler", "listener"}
_SVG_LINKS = ("#", "data:image/png", "data:image/jpeg")
_OUTSIDE_URL_RE = re.compile(r"url\(\s*['\"]?(?!#)", re.IGNORECASE)
_FONT_MAGIC = {
    "ttf": (b"\x00\x01\x00\x00", b"true"),
    "otf": (b"OTTO",),
    "woff": (b"wOFF",),
}


class AssetRefused(ValueError):
    """The asset cannot be stored; the message says why and what to do instead."""


@dataclass(frozen=True)
class AssetInfo:
    """An asset as the editor lists it."""

    name: str
    kind: str
    size: int
    reference: str


def extension(name: str) -> str:
    return name.rpartition(".")[2].lower() if "." in name else ""


def upload_name(filename: str) -> str:
    """The asset name an uploaded file is stored under: its file name in lower case, spaces
    and other characters turned into hyphens (it is typed into templates as "asset:<name>")."""
    base = filename.replace("\\", "/").rpartition("/")[2].strip().lower()
    stem, dot, ext = base.rpartition(".")
    stem = re.sub(r"[^a-z0-9_.-]+", "-", stem if dot else base).strip("-.") or "asset"
    return f"{stem[:90]}.{ext}" if dot else stem[:100]


def info(name: str, data: bytes) -> AssetInfo:
    kind, _ = KINDS.get(extension(name), ("file", 0))
    return AssetInfo(name=name, kind=kind, size=len(data), reference=f"asset:{name}")


def check(name: str, data: bytes) -> None:
    """Refuse (AssetRefused) an asset whose name, kind, size or content is not allowed."""
    check_size(name, len(data))
    ext = extension(name)
    if ext == "svg":
        _check_svg(name, data)
    elif ext in _FONT_MAGIC:
        _check_font(name, data, ext, KINDS[ext][0])
    else:
        _check_raster(name, data, KINDS[ext][0])


def check_size(name: str, size: int) -> None:
    """Refuse a name that is not an allowed kind's, or a size over the kind's limit (an upload
    is checked so before it is read)."""
    ext = extension(name)
    if ext not in KINDS:
        raise AssetRefused(
            f"{name}: a template can carry PNG, JPEG and SVG images and TrueType, OpenType "
            "and WOFF fonts (.png, .jpg, .svg, .ttf, .otf, .woff) only."
        )
    if not NAME_RE.match(name):
        raise AssetRefused(
            f"{name}: an asset's name is lower-case letters, digits, '.', '_' and '-' "
            "(at most 100), starting with a letter or digit."
        )
    kind, limit = KINDS[ext]
    if not size:
        raise AssetRefused(f"{name}: the file is empty.")
    if size > limit:
        raise AssetRefused(
            f"{name}: the file is {_size(size)}; a {kind} may be at most {_size(limit)}."
        )


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MB" if n >= MIB else f"{max(n // KIB, 1)} KB"


def _check_raster(name: str, data: bytes, kind: str) -> None:
    from PIL import Image

    expected = "PNG" if kind.startswith("PNG") else "JPEG"
    try:
        with Image.open(io.BytesIO(data)) as image:
            found, (width, height) = image.format, image.size
            image.verify()
    except Exception as exc:  # Pillow raises many kinds for a damaged file
        raise AssetRefused(
            f"{name}: this is not a readable {kind}; save it again from the image program."
        ) from exc
    if found != expected:
        raise AssetRefused(
            f"{name}: the file is a {found} image, not a {kind}; give it the right extension."
        )
    if width * height > MAX_PIXELS:
        raise AssetRefused(
            f"{name}: the image is {width} by {height} pixels; at most {MAX_PIXELS // 1_000_000} "
            "million pixels (a letter at 300 dpi needs far fewer)."
        )


def _check_font(name: str, data: bytes, ext: str, kind: str) -> None:
    from fontTools.ttLib import TTFont, TTLibError

    if not data.startswith(_FONT_MAGIC[ext]):
        raise AssetRefused(f"{name}: this is not a {kind}; give the file the right extension.")
    try:
        TTFont(io.BytesIO(data), lazy=True)["name"]
    except (TTLibError, KeyError, ValueError, AssertionError) as exc:
        raise AssetRefused(f"{name}: this {kind} cannot be read ({exc}).") from exc


def _check_svg(name: str, data: bytes) -> None:
    """An SVG is a picture: no DOCTYPE (entities), no scripts or event handlers, no embedded
    documents, and nothing that refers outside the file (links are kept to "#id" and data:)."""
    text = data.decode("utf-8", errors="replace")
    if re.search(r"<!DOCTYPE|<!ENTITY", text, re.IGNORECASE):
        raise AssetRefused(f"{name}: remove the DOCTYPE; an SVG asset may not declare entities.")
    if re.search(r"<\?xml-stylesheet", text, re.IGNORECASE):
        raise AssetRefused(f"{name}: remove the xml-stylesheet instruction.")
    try:
        root = ET.fromstring(data)  # noqa: S314 (no DOCTYPE, so no entities to expand)
    except ET.ParseError as exc:
        raise AssetRefused(f"{name}: this is not well-formed SVG ({exc}).") from exc
    if root.tag not in {f"{_SVG_NS}svg", "svg"}:
        raise AssetRefused(f"{name}: this is not an SVG image (its root is not <svg>).")
    for element in root.iter():
        local = element.tag.rpartition("}")[2]
        if local in _SVG_REFUSED:
            raise AssetRefused(f"{name}: remove the <{local}> element; an image may not have one.")
        for attribute, value in element.attrib.items():
            _check_svg_attribute(name, local, attribute, value)
        if local == "style" and (
            _OUTSIDE_URL_RE.search(element.text or "") or "@import" in (element.text or "")
        ):
            raise AssetRefused(f"{name}: its <style> refers to another file; an image may not.")


def _check_svg_attribute(name: str, element: str, attribute: str, value: str) -> None:
    local = attribute.rpartition("}")[2]
    if local.lower().startswith("on"):
        raise AssetRefused(
            f"{name}: remove the {local} attribute of <{element}>; an image runs no scripts."
        )
    if attribute in {"href", _XLINK_HREF} and not value.strip().startswith(_SVG_LINKS):
        raise AssetRefused(
            f"{name}: <{element}> links to {value[:80]!r}; an image may refer only to its own "
            "parts (#id) or embed a PNG or JPEG as a data: URL."
        )
    if _OUTSIDE_URL_RE.search(value):
        raise AssetRefused(
            f"{name}: the {local} attribute of <{element}> refers to another file; "
            "an image may not."
        )
