"""Pure composition: template sources + customer data -> HTML / email / SMS / push text.

No Django here on purpose: the same code runs in the web process (previews, text channels)
and in the render worker (PDF), and a template version must compose identically in both.
Templates are authored by people we trust less than our code, so everything goes through
Jinja's sandbox with strict undefined variables and size caps.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date as date_type
from datetime import datetime as datetime_type
from datetime import tzinfo as tzinfo_type
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import babel
import babel.dates
import babel.numbers
import jinja2
import jsonschema
import pygal
import pygal.style
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markupsafe import Markup, escape

# Caps that keep one bad template from exhausting a web process (the PDF path additionally
# runs under the render worker's OS limits).
TEMPLATE_MAX_CHARS = 2 * 1024 * 1024
OUTPUT_MAX_CHARS = 8 * 1024 * 1024
SMS_MAX_SEGMENTS = 6
PUSH_TITLE_MAX = 65
PUSH_BODY_MAX = 240
COMPOSER_CACHE_SIZE = 64
# What the sandbox itself refuses, so that a size or iteration trick fails at once with a reason
# (the render worker's OS limits catch whatever slips past these; see documents/sandbox.py).
VALUE_MAX_CHARS = OUTPUT_MAX_CHARS  # any one string a template builds
VALUE_MAX_ITEMS = 1_000_000  # any one list or tuple a template builds
INT_MAX_BITS = 4096  # about 1,233 decimal digits: far beyond any amount, far below a bomb
LOOP_MAX_ITERATIONS = 1_000_000  # all {% for %} iterations of one rendition, together
FORMAT_ARG_MAX = 1_000  # widths, precisions, decimals and indents a template may ask for
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class CompositionError(Exception):
    """Composition failed in a way the author or integrator can fix; `reason` is for humans."""

    def __init__(self, reason: str, *, errors: list[FieldError] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors: list[FieldError] = list(errors or [])


class DataInvalid(CompositionError):
    pass


class TemplateError(CompositionError):
    pass


_XML_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_SCRIPT_RE = re.compile(r"<script\b[^>]*/>|<script\b.*?</script>", re.DOTALL)
_LINE_BREAKS_RE = re.compile(r"\s*[\r\n\v\f\x85\u2028\u2029]+\s*")
_PAGE_VALUE_RE = re.compile(r"^[A-Za-z0-9 .\-]+$")
# Page sizes a printer and a PDF viewer can handle: PDF itself stops at 200 in (5,080 mm).
PAGE_MIN_MM = 10.0
PAGE_MAX_MM = 5080.0


@dataclass(frozen=True)
class PageSpec:
    size: str = "A4"
    margin: str = "18mm"

    def css(self) -> str:
        # The values end up inside a stylesheet; refusing anything but plain tokens keeps a
        # page spec from smuggling in rules of its own.
        for name, value in (("size", self.size), ("margin", self.margin)):
            if not _PAGE_VALUE_RE.match(value):
                raise TemplateError(f"page {name} {value!r} is not a plain CSS value")
        return f"@page {{ size: {self.size}; margin: {self.margin}; }}"


@dataclass(frozen=True)
class Sources:
    print_html: str = ""
    print_css: str = ""
    email_subject: str = ""
    email_html: str = ""
    email_text: str = ""
    sms_text: str = ""
    push_title: str = ""
    push_body: str = ""
    partials: Mapping[str, str] = field(default_factory=dict)
    static_sections: Mapping[str, str] = field(default_factory=dict)
    assets: Mapping[str, bytes] = field(default_factory=dict)
    page: PageSpec = PageSpec()
    # The language's message catalog (English text -> translation), read by _() in templates
    # and in print.css; see Composer.translate.
    messages: Mapping[str, str] = field(default_factory=dict)


_TEXT_PARTS = (
    "print_html",
    "print_css",
    "email_subject",
    "email_html",
    "email_text",
    "sms_text",
    "push_title",
    "push_body",
)


def _content_digest(sources: Sources) -> str:
    # Hashing assets (fonts, logos) costs a millisecond per megabyte and composer_for is on the
    # hot path, so the digest is memoised on the instance; Sources is frozen by contract.
    cached = sources.__dict__.get("_ccm_digest")
    if cached is not None:
        return cached
    canonical = {
        "v": 1,
        **{part: getattr(sources, part) for part in _TEXT_PARTS},
        "partials": dict(sorted(sources.partials.items())),
        "static_sections": dict(sorted(sources.static_sections.items())),
        "assets": {
            name: hashlib.sha256(content).hexdigest()
            for name, content in sorted(sources.assets.items())
        },
        "page": {"size": sources.page.size, "margin": sources.page.margin},
        # Only when present, so that versions without a catalog keep their keys.
        **({"messages": dict(sorted(sources.messages.items()))} if sources.messages else {}),
    }
    digest = hashlib.sha256(
        json.dumps(canonical, sort_keys=True, ensure_ascii=True).encode()
    ).hexdigest()
    object.__setattr__(sources, "_ccm_digest", digest)
    return digest


def sources_key(sources: Sources, locale: str) -> str:
    """Stable SHA-256 of everything that affects output: the sources and the locale."""
    return hashlib.sha256(f"{_content_digest(sources)}\0{locale}".encode()).hexdigest()


# -- data validation --------------------------------------------------------------------------


def _pointer(path: Iterator[Any] | Any) -> str:
    return ".".join(str(part) for part in path)


def schema_validator(schema: Mapping) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for a template's data schema (TemplateError if the schema
    itself is invalid). Build it once where many documents share a schema."""
    validator_cls = jsonschema.Draft202012Validator
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TemplateError(f"data schema is invalid: {exc.message}") from exc
    return validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)


def data_errors(validator: jsonschema.protocols.Validator, data: Any) -> list[FieldError]:
    """Every error, each at the path of the field to fix, sorted."""
    errors: list[FieldError] = []
    for error in validator.iter_errors(data):
        path = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, Mapping):
            # jsonschema reports a missing property at its parent; integrators want the
            # path of the field they forgot.
            # One error per missing property; the message starts with that property's repr.
            required: Any = error.validator_value
            missing = [name for name in required if name not in error.instance]
            path += [name for name in missing if error.message.startswith(repr(name))][:1]
        errors.append(FieldError(field=_pointer(path), message=error.message))
    errors.sort(key=lambda e: (e.field, e.message))
    return errors


def validate_data(schema: Mapping, data: object) -> None:
    """Validate against a Draft 2020-12 schema; DataInvalid lists every error, not the first."""
    errors = data_errors(schema_validator(schema), data)
    if errors:
        reason = "; ".join(f"{e.field or '(root)'}: {e.message}" for e in errors)
        raise DataInvalid(f"data does not match the template's schema: {reason}", errors=errors)


# -- locale-aware filters ---------------------------------------------------------------------


def _decimal(value: Any, *, what: str) -> Decimal:
    if isinstance(value, bool):
        raise TemplateError(f"{what}: {value!r} is not a number")
    try:
        return Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise TemplateError(f"{what}: {value!r} is not a number") from exc


def _as_date(value: Any) -> date_type:
    if isinstance(value, datetime_type):
        return value.date()
    if isinstance(value, date_type):
        return value
    if isinstance(value, str):
        try:
            if "T" in value or " " in value.strip():
                return datetime_type.fromisoformat(value).date()
            return date_type.fromisoformat(value)
        except ValueError as exc:
            raise TemplateError(f"date: {value!r} is not an ISO date") from exc
    raise TemplateError(f"date: {value!r} is not a date")


def _as_datetime(value: Any) -> datetime_type:
    if isinstance(value, datetime_type):
        return value
    if isinstance(value, str):
        try:
            return datetime_type.fromisoformat(value)
        except ValueError as exc:
            raise TemplateError(f"datetime: {value!r} is not an ISO date-time") from exc
    raise TemplateError(f"datetime: {value!r} is not a date-time")


@functools.lru_cache(maxsize=4096)
def _cached_date(value: str, format: str, locale: babel.Locale) -> str:
    return babel.dates.format_date(_as_date(value), format=format, locale=locale)


@dataclass(frozen=True)
class _Formatters:
    locale: babel.Locale
    timezone: tzinfo_type

    def money(self, value: Any, currency: str) -> str:
        return babel.numbers.format_currency(
            _decimal(value, what="money"), currency, locale=self.locale
        )

    def number(self, value: Any, decimals: int | None = None) -> str:
        amount = _decimal(value, what="number")
        if decimals is None:
            return babel.numbers.format_decimal(amount, locale=self.locale)
        pattern = babel.numbers.parse_pattern(self.locale.decimal_formats[None].pattern)
        pattern.frac_prec = (decimals, decimals)
        return pattern.apply(amount, self.locale)

    def percent(self, value: Any, decimals: int = 0) -> str:
        pattern = babel.numbers.parse_pattern(self.locale.percent_formats[None].pattern)
        pattern.frac_prec = (decimals, decimals)
        return pattern.apply(_decimal(value, what="percent"), self.locale)

    def date(self, value: Any, format: str = "long") -> str:
        if isinstance(value, str):
            # Business data repeats the same few dates across a whole run; Babel's pattern
            # formatting costs ~0.1 ms a call.
            return _cached_date(value, format, self.locale)
        return babel.dates.format_date(_as_date(value), format=format, locale=self.locale)

    def datetime(self, value: Any, format: str = "medium") -> str:
        moment = _as_datetime(value)
        if moment.tzinfo is None:
            # A naive time in business data means the business's own zone, not the server's.
            moment = moment.replace(tzinfo=self.timezone)
        return babel.dates.format_datetime(
            moment, format=format, tzinfo=moment.tzinfo, locale=self.locale
        )


# A print house style: white paper, one brand colour, light solid gridlines and the house
# letter's body font, so a chart reads as part of the page rather than pasted onto it.
CHART_FONT = "Liberation Sans, DejaVu Sans, sans-serif"
CHART_STYLE = pygal.style.Style(
    background="white",
    plot_background="white",
    foreground="#1F2933",
    foreground_strong="#1F2933",
    foreground_subtle="#5B6B75",
    opacity="1",
    opacity_hover="1",
    transition="none",
    colors=("#0B4F6C", "#C4581C", "#1E7B45", "#35C4B5"),
    guide_stroke_color="#E1E8EC",
    major_guide_stroke_color="#E1E8EC",
    guide_stroke_dasharray="none",
    major_guide_stroke_dasharray="none",
    font_family=CHART_FONT,
    title_font_family=CHART_FONT,
    label_font_family=CHART_FONT,
    major_label_font_family=CHART_FONT,
    legend_font_family=CHART_FONT,
    value_font_family=CHART_FONT,
    title_font_size=14,
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=11,
)
# A marked series (estimated days) in a lighter tone of the first colour, told apart in the legend.
MARKED_CHART_STYLE = pygal.style.Style(
    **{**CHART_STYLE.to_dict(), "colors": ("#0B4F6C", "#9FC4D6")}
)
CHART_TICKS = 5
_NICE_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)


def nice_ticks(low: float, high: float, *, count: int = CHART_TICKS) -> list[float]:
    """Round axis ticks (steps of 1, 2, 2.5 or 5 times a power of ten) from zero, or from below
    the lowest value when it is negative, to at or above the highest: about `count` of them."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high == low:
        high = low + 1
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(s * magnitude for s in _NICE_STEPS if s * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    # Rounded so 0.1 + 0.2 does not print as 0.30000000000000004.
    return [round(n * step, 10) for n in range(first, last + 1)]


def chart(
    kind: str,
    labels: list[Any],
    values: list[Any],
    *,
    title: str = "",
    width: int = 480,
    height: int = 220,
    series_name: str = "",
    unit: str = "",
    label_format: str = "",
    locale: babel.Locale | str = "en_GB",
    marked: list[Any] | None = None,
    marked_name: str = "",
    drawing: int | None = None,
) -> Markup:
    """An inline SVG chart for print: no script, no external references, same bytes every time.

    `marked` (bar charts) names labels whose bars are drawn apart, in a lighter tone, as a
    second series called `marked_name` in a legend under the chart beside `series_name`: e.g.
    the days of a statement that hold estimated readings.

    The value axis has round ticks, written as numbers are in `locale` and followed by `unit`
    ("1.000 kWh"); with `label_format` (a CLDR date pattern such as "LLL" or "MMM y") the labels
    are ISO dates ("2025-03" or "2025-03-01") written as that pattern in `locale` ("Mär"). In
    templates, `chart` is bound to the template's locale.

    `drawing` is how the chart is drawn (see CHART_DRAWINGS); by default, the drawing of the
    print rendition being composed (Composer.print_html), or else 1: inline SVG, as a screen
    shows it."""
    classes = {"bar": pygal.Bar, "line": pygal.Line}
    if kind not in classes:
        raise TemplateError(f"chart: kind must be 'bar' or 'line', not {kind!r}")
    if not (0 < width <= 2000 and 0 < height <= 2000):
        raise TemplateError("chart: width and height must be between 1 and 2000")
    if len(labels) != len(values) or len(values) > 1000:
        raise TemplateError("chart: labels and values must have the same length (at most 1000)")
    if len(unit) > 20:
        raise TemplateError("chart: unit must be at most 20 characters")
    if marked and kind != "bar":
        raise TemplateError("chart: only bars can be marked")
    where = babel.Locale.parse(locale) if isinstance(locale, str) else locale
    numbers = [None if v is None else float(_decimal(v, what="chart")) for v in values]
    texts = [_chart_label(label, label_format, where) for label in labels]
    present = [n for n in numbers if n is not None] or [0.0]
    ticks = nice_ticks(min(present), max(present))
    suffix = f"\u00a0{unit}" if unit else ""
    flagged = {str(m) for m in marked or []}
    apart = [str(label) in flagged for label in labels]
    graph = (pygal.StackedBar if any(apart) else classes[kind])(
        width=width,
        height=height,
        explicit_size=True,
        title=title or None,
        show_legend=bool(series_name) or any(apart),
        legend_at_bottom=any(apart),
        legend_at_bottom_columns=2,
        style=MARKED_CHART_STYLE if any(apart) else CHART_STYLE,
        range=(ticks[0], ticks[-1]),
        show_minor_y_labels=False,
        show_x_guides=False,
        show_y_guides=True,
        truncate_label=-1,
        disable_xml_declaration=True,
        js=[],
        pretty_print=False,
        value_formatter=lambda v: babel.numbers.format_decimal(v, locale=where) + suffix,
    )
    graph.y_labels = ticks
    graph.y_labels_major = ticks
    # pygal names the chart with uuid4(); a stable id keeps re-rendered documents identical.
    graph.uuid = (
        "ccm-"
        + hashlib.sha256(
            json.dumps(
                [kind, texts, numbers, title, width, height, series_name, unit, str(where)]
                + ([apart, marked_name] if any(apart) else [])
            ).encode()
        ).hexdigest()[:16]
    )
    graph.x_labels = texts
    if any(apart):  # stacked: each bar is in exactly one of the two series
        pairs = list(zip(numbers, apart, strict=True))
        graph.add(series_name or " ", [None if a else n for n, a in pairs])
        graph.add(marked_name or " ", [n if a else None for n, a in pairs])
    else:
        graph.add(series_name or " ", numbers)
    # pygal always embeds its config as a script and stamps the render date into a comment;
    # neither draws anything, and both would make the bytes vary or carry code into the PDF.
    # The SVG is XML-serialised, so "<" inside text is escaped and cannot fake a tag here.
    svg = _SCRIPT_RE.sub("", _XML_COMMENT_RE.sub("", graph.render(is_unicode=True)))
    if _drawing_for(drawing) == 2:
        return _paper_drawing(svg)
    return Markup(svg)  # noqa: S704 - pygal builds the SVG with an XML serialiser, text escaped


# How a chart is drawn. An archived document records the drawing it was rendered with (in its
# engine info), so that a reprint draws its charts the same way and comes out byte for byte.
# 1: inline SVG as pygal writes it (what a screen shows; every document archived before
#    drawings were recorded).
# 2: for paper: what paper never shows left out (tooltips and their data, titles shown on hover,
#    guides hidden by the chart's own style, hover and tooltip style rules), placed as a data:
#    URL image in an <svg> of the chart's own size, so that the template's CSS for the chart's
#    svg still sizes it. WeasyPrint then no longer cascades the template's styles over every
#    element of the chart, which was most of a chart's layout time.
CHART_DRAWINGS = (1, 2)
PRINT_DRAWING = 2
# The drawing of the print rendition being composed (Composer.print_html); None elsewhere.
_print_drawing: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "ccm_print_drawing", default=None
)


class UnknownDrawing(CompositionError):
    pass


def drawing_checked(drawing: int) -> int:
    """`drawing` if this code knows how to draw it; UnknownDrawing otherwise (e.g. a document
    archived by a newer CCM, which must not be reprinted with charts drawn differently)."""
    if isinstance(drawing, bool) or drawing not in CHART_DRAWINGS:
        known = ", ".join(str(d) for d in CHART_DRAWINGS)
        raise UnknownDrawing(f"chart drawing {drawing!r} is unknown: this CCM draws {known}")
    return drawing


def _drawing_for(drawing: int | None) -> int:
    if drawing is None:
        drawing = _print_drawing.get()
    return 1 if drawing is None else drawing_checked(drawing)


_SVG_NAMESPACE = "http://www.w3.org/2000/svg"
# Elements paper never shows: tooltip data (<desc>) and hover titles (<title>).
_UNSEEN_TAGS = frozenset({"desc", "title"})
# Style rules whose every selector only matters on a screen.
_SCREEN_ONLY_SELECTOR_RE = re.compile(r":hover|\.tooltip|\.active")
_CSS_RULE_RE = re.compile(r"([^{}]+)\{([^{}]*)\}")


def _classes(element: ElementTree.Element) -> set[str]:
    return set(element.get("class", "").split())


def _paper_only(parent: ElementTree.Element, *, in_x_axis: bool = False) -> None:
    for child in list(parent):
        # Local names: the whole chart is SVG, and the root says so once (see _paper_drawing).
        child.tag = child.tag.rpartition("}")[2]
        classes = _classes(child)
        hidden_guide = in_x_axis and child.tag == "path" and classes == {"guide", "line"}
        if child.tag in _UNSEEN_TAGS or "tooltip-overlay" in classes or hidden_guide:
            parent.remove(child)
            continue
        _paper_only(child, in_x_axis=in_x_axis or {"axis", "x"} <= classes)


def _paper_style(css: str) -> str:
    def keep(match: re.Match) -> str:
        selectors = match.group(1).split(",")
        if all(_SCREEN_ONLY_SELECTOR_RE.search(s) for s in selectors):
            return ""
        return match.group(0)

    return _CSS_RULE_RE.sub(keep, css)


def _paper_drawing(svg: str) -> Markup:
    """Drawing 2 of `svg` (see CHART_DRAWINGS)."""
    root = ElementTree.fromstring(svg)  # noqa: S314 - pygal's own output, no entities
    # The x axis's guides are hidden by pygal's style (show_x_guides=False); paper needs neither.
    _paper_only(root)
    for style in root.iter("style"):
        style.text = _paper_style(style.text or "")
    # Written with SVG as the default namespace, as pygal wrote it: ElementTree's own prefix
    # table is global, and any library may change it.
    root.tag = "svg"
    root.set("xmlns", _SVG_NAMESPACE)
    image = base64.b64encode(ElementTree.tostring(root, encoding="utf-8")).decode("ascii")
    width, height, box = root.get("width"), root.get("height"), root.get("viewBox")
    return Markup(  # noqa: S704 - numbers from pygal and base64 text only
        f'<svg xmlns="{_SVG_NAMESPACE}" class="pygal-chart" viewBox="{box}" '
        f'width="{width}" height="{height}"><image width="{width}" height="{height}" '
        f'href="data:image/svg+xml;base64,{image}"/></svg>'
    )


def _chart_label(label: Any, label_format: str, locale: babel.Locale) -> str:
    if not label_format:
        return str(label)
    text = str(label)
    # A month ("2025-03") is its first day.
    try:
        moment = _as_date(f"{text}-01" if re.fullmatch(r"\d{4}-\d{2}", text) else text)
    except TemplateError as exc:
        raise TemplateError(f"chart: {exc.reason}") from exc
    try:
        return babel.dates.format_date(moment, format=label_format, locale=locale)
    except (ValueError, KeyError) as exc:
        raise TemplateError(f"chart: label_format {label_format!r} is not a date pattern") from exc


# -- translation ------------------------------------------------------------------------------

# _("English text") in print.css, replaced by the translation as a CSS string before parsing.
_CSS_MESSAGE_RE = re.compile(r'(?<![\w-])_\(\s*"((?:[^"\\\n]|\\.)*)"\s*\)')


# {name} in a message: replaced by the value passed as name=… (nothing else: no attribute
# access or format spec, which str.format would allow a template to abuse).
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _css_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\A ")
    return f'"{escaped}"'


# -- the sandbox ------------------------------------------------------------------------------


class _PartialsLoader(jinja2.BaseLoader):
    """Only the template version's own partials are loadable: no filesystem, no other versions."""

    def __init__(self, partials: Mapping[str, str]) -> None:
        self._partials = dict(partials)

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if template not in self._partials:
            raise jinja2.TemplateNotFound(template)
        source = self._partials[template]
        if len(source) > TEMPLATE_MAX_CHARS:
            raise TemplateError(f"{template}: template is larger than {TEMPLATE_MAX_CHARS} chars")
        return source, template, lambda: True


class _LoopBudget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = LOOP_MAX_ITERATIONS


# One budget per rendition run (set in Composer._run); templates render in the thread that asks.
_loop_budget: contextvars.ContextVar[_LoopBudget] = contextvars.ContextVar("ccm_loop_budget")


def _refuse_size(value: Any) -> Any:
    if isinstance(value, str) and len(value) > VALUE_MAX_CHARS:
        raise SecurityError(
            f"a value of {len(value)} characters; at most {VALUE_MAX_CHARS} allowed"
        )
    if isinstance(value, list | tuple) and len(value) > VALUE_MAX_ITEMS:
        raise SecurityError(f"a list of {len(value)} items; at most {VALUE_MAX_ITEMS} allowed")
    return value


def _refuse_chars(total: int, what: str) -> None:
    if total > VALUE_MAX_CHARS:
        raise SecurityError(
            f"{what} would be {total} characters; at most {VALUE_MAX_CHARS} allowed"
        )


def _refuse_arg(value: Any, what: str) -> None:
    if isinstance(value, int) and value > FORMAT_ARG_MAX:
        raise SecurityError(f"{what} {value} is larger than the {FORMAT_ARG_MAX} allowed")


def _refuse_int(bits: int, operator: str) -> None:
    if bits > INT_MAX_BITS:
        digits = int(bits * 0.30103)
        raise SecurityError(
            f"{operator} would give a number of about {digits} digits; templates allow numbers "
            f"of at most {INT_MAX_BITS} bits (about {int(INT_MAX_BITS * 0.30103)} digits)"
        )


_PRINTF_SPEC_RE = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _refuse_printf(template: str, args: Any) -> None:
    """`'%0100000000d' % 1` allocates before any result check could see it."""
    star_args = args if isinstance(args, tuple) else (args,)
    for match in _PRINTF_SPEC_RE.finditer(template):
        for spec in match.groups():
            if spec == "*":
                for arg in star_args:
                    _refuse_arg(arg, "a format width")
            elif spec:
                _refuse_arg(int(spec), "a format width")


def _joined_size(items: list, separator: str) -> int:
    return sum(len(x) for x in items if isinstance(x, str)) + len(separator) * max(
        len(items) - 1, 0
    )


def _replaced_size(text: str, old: str, new: str, count: Any = None) -> int:
    hits = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def _guard_filter(name: str, func: Callable) -> Callable:
    """The filter, refusing arguments that would build a huge value and results that did."""

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja passes the context it expects
    def guarded(*args: Any, **kwargs: Any) -> Any:
        # Pass-context filters take the context/environment first; the value comes after it.
        rest = list(args[1:] if getattr(func, "jinja_pass_arg", None) else args)
        value = rest[0] if rest else None
        params = rest[1:]
        if name == "center":
            width = params[0] if params else kwargs.get("width", 80)
            if isinstance(width, int):
                _refuse_chars(width, "center()")
        elif name == "indent" and isinstance(value, str):
            width = params[0] if params else kwargs.get("width", 4)
            per_line = width if isinstance(width, int) else len(str(width))
            _refuse_chars(len(value) + per_line * (value.count("\n") + 1), "indent()")
        elif name == "join" and value is not None and not isinstance(value, str):
            items = list(value)
            separator = params[0] if params else kwargs.get("d", "")
            _refuse_chars(_joined_size(items, str(separator)), "join()")
            args = (*args[: len(args) - len(rest)], items, *params)
        elif name == "replace" and isinstance(value, str) and len(params) >= 2:
            _refuse_chars(
                _replaced_size(value, str(params[0]), str(params[1]), *params[2:3]), "replace()"
            )
        elif name == "format" and isinstance(value, str):
            _refuse_printf(value, tuple(params) or kwargs)
        elif name in ("slice", "batch") and params and isinstance(params[0], int):
            if params[0] > VALUE_MAX_ITEMS:
                raise SecurityError(f"{name}() into more than {VALUE_MAX_ITEMS} parts")
        elif name == "tojson":
            indent = params[0] if params else kwargs.get("indent")
            _refuse_arg(indent if isinstance(indent, int) else len(indent or ""), "tojson() indent")
        elif name in ("number", "percent"):
            decimals = params[0] if params else kwargs.get("decimals")
            if isinstance(decimals, int):
                _refuse_arg(decimals, f"{name}() decimals")
        return _refuse_size(func(*args, **kwargs))

    return guarded


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    # Placeholder text for drafts; lipsum(n=10**9) would never end.
    _refuse_arg(n, "lipsum() paragraphs")
    _refuse_arg(max, "lipsum() words")
    return jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max)


_STR_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


class _CodeGenerator(CodeGenerator):
    """Compiles every `{% for %}` through the iteration budget and every `~` through a size
    check made before the pieces are joined."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in list(node.find_all(nodes.For)):
            counted = nodes.Call(
                nodes.EnvironmentAttribute("ccm_loop"), [loop.iter], [], None, None
            )
            counted.set_lineno(loop.lineno)
            loop.iter = counted.set_environment(self.environment)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.ccm_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's sandbox plus limits on what a template can build: numbers, strings and lists
    past a size are refused before they are allocated, and loops share one iteration budget."""

    code_generator_class = _CodeGenerator
    # Multiplying strings or raising to huge powers allocates before any output cap can see
    # it, so those operators are checked up front.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        # The optimizer evaluates constant expressions while compiling, outside any budget.
        super().__init__(optimized=False, **options)
        self.globals["lipsum"] = _bounded_lipsum

    def guard_filters(self) -> None:
        for name, func in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, func)

    def ccm_loop(self, iterable: Iterable) -> Iterator:
        budget = _loop_budget.get()
        for item in iterable:
            budget.left -= 1
            if budget.left < 0:
                raise SecurityError(
                    f"loops ran more than {LOOP_MAX_ITERATIONS} iterations in one rendition"
                )
            yield item

    def ccm_concat(self, join: Callable, parts: tuple) -> str:
        _refuse_chars(sum(len(p) for p in parts if isinstance(p, str)), "joining with ~")
        return _refuse_size(join(parts))

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any):
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**":
            if ints and right > 0 and abs(left) > 1:
                _refuse_int(right * abs(left).bit_length(), "**")
            return left**right
        if operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                return _add_checked(left, right)
            return left + right
        if operator == "%":
            if isinstance(left, str):
                _refuse_printf(left, right)
                return _refuse_size(left % right)
            return left % right
        if ints:
            _refuse_int(abs(left).bit_length() + abs(right).bit_length(), "*")
            return left * right
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int):
                limit = VALUE_MAX_CHARS if isinstance(seq, str) else VALUE_MAX_ITEMS
                if len(seq) * times > limit:
                    raise SecurityError("repeated sequence would be too large")
        return left * right

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any):
        if isinstance(__obj, LoopContext) and args:
            # loop(children) in a recursive loop iterates too.
            args = (__self.ccm_loop(args[0]), *args[1:])
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and args:
            name = __obj.__name__
            if name in _STR_WIDTH_METHODS:
                if isinstance(args[0], int):
                    _refuse_chars(args[0], f"{name}()")
            elif name == "expandtabs" and isinstance(args[0], int):
                _refuse_chars(len(owner) + args[0] * owner.count("\t"), "expandtabs()")
            elif name == "join":
                items = list(args[0])
                _refuse_chars(_joined_size(items, owner), "join()")
                args = (items,)
            elif name == "replace" and len(args) >= 2:
                _refuse_chars(
                    _replaced_size(owner, str(args[0]), str(args[1]), *args[2:3]), "replace()"
                )
        return _refuse_size(super().call(__context, __obj, *args, **kwargs))


def _add_checked(left: Any, right: Any) -> Any:
    size = len(left) + len(right)
    if isinstance(left, str):
        _refuse_chars(size, "+")
    elif size > VALUE_MAX_ITEMS:
        raise SecurityError(f"+ would build a list of {size} items; at most {VALUE_MAX_ITEMS}")
    return left + right


def _one_line(text: str) -> str:
    return _LINE_BREAKS_RE.sub(" ", text).strip()


_PARTS = {
    "print_html": ("print.html", True),
    "email_subject": ("email.subject", False),
    "email_html": ("email.html", True),
    "email_text": ("email.txt", False),
    "sms_text": ("sms.txt", False),
    "push_title": ("push.title", False),
    "push_body": ("push.body", False),
}


def _template_frame(exc: BaseException, names: set[str]) -> tuple[str, int] | None:
    # Jinja rewrites tracebacks so template frames carry the template name and source line;
    # the innermost one is where the author has to look.
    found = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in names:
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


class Composer:
    """Compiles one Sources (in one locale) once and renders it for any amount of data."""

    def __init__(self, sources: Sources, *, locale: str = "en_GB", timezone: str = "UTC") -> None:
        self.sources = sources
        self.locale_name = locale
        try:
            self.locale = babel.Locale.parse(locale.replace("-", "_"))
        except (ValueError, babel.UnknownLocaleError) as exc:
            raise TemplateError(f"unknown locale {locale!r}") from exc
        self.formatters = _Formatters(locale=self.locale, timezone=ZoneInfo(timezone))
        self._envs = {
            autoescape: self._make_env(autoescape=autoescape) for autoescape in (True, False)
        }
        self._compiled: dict[str, jinja2.Template] = {}
        self._lock = threading.Lock()
        self._names = (
            {name for name, _ in _PARTS.values()}
            | set(sources.partials)
            | {f"static:{name}" for name in sources.static_sections}
        )

    def _make_env(self, *, autoescape: bool) -> _Sandbox:
        env = _Sandbox(
            loader=_PartialsLoader(self.sources.partials),
            undefined=jinja2.StrictUndefined,
            autoescape=autoescape,
            auto_reload=False,
            cache_size=-1,
        )
        fmt = self.formatters
        env.filters.update(
            money=fmt.money,
            number=fmt.number,
            percent=fmt.percent,
            date=fmt.date,
            datetime=fmt.datetime,
        )
        env.globals["chart"] = functools.partial(chart, locale=self.locale)
        env.globals["_"] = self._gettext()
        env.guard_filters()
        return env

    def translate(self, text: str) -> str:
        """The catalog's translation of `text`, or `text` itself (English is the key).

        Templates write `{{ _("Amount to pay") }}` (or `{{ _("Please pay by {date}", date=…) }}`,
        the value put in place of {date}) and print.css `content: _("Page")`; the house
        style's catalog (messages/<language>.json in a shared part, merged with the template's
        own) holds the translations, so one template serves every language and a label, a chart
        title and the footer are translated the same way."""
        if not isinstance(text, str):
            raise TemplateError(f"_(): {text!r} is not text")
        return self.sources.messages.get(text, text)

    def _gettext(self) -> Callable[..., str]:
        translate = self.translate
        messages = self.sources.messages

        @jinja2.pass_eval_context
        def gettext(eval_ctx: nodes.EvalContext, text: str, **values: Any) -> str:
            # As Jinja's i18n extension does: in HTML the translation is markup the author
            # wrote (it may hold <strong>), and the values put into it are escaped.
            translated = translate(text)
            if eval_ctx.autoescape:
                # A translation is the author's own markup (it may hold <strong>); text without
                # one may be customer data (_(item.description)) and is escaped, as are values
                # (a value built with {% set %}…{% endset %} is markup already and stays so).
                found = isinstance(text, str) and text in messages
                translated = Markup(translated) if found else escape(translated)  # noqa: S704
                values = {name: escape(value) for name, value in values.items()}

            def fill(match: re.Match) -> str:
                if match.group(1) not in values:
                    raise TemplateError(f"_(): {text!r} needs a value for {{{match.group(1)}}}")
                return str(values[match.group(1)])

            filled = _PLACEHOLDER_RE.sub(fill, translated)
            return Markup(filled) if eval_ctx.autoescape else filled  # noqa: S704 - escaped above

        return gettext

    def print_css(self) -> str:
        """print.css with each _("…") replaced by its translation as a CSS string."""
        return _CSS_MESSAGE_RE.sub(
            lambda m: _css_string(self.translate(re.sub(r"\\(.)", r"\1", m.group(1)))),
            self.sources.print_css,
        )

    @property
    def lang(self) -> str:
        return str(self.locale).replace("_", "-")

    # -- compiling and running ------------------------------------------------------------

    def _template(self, name: str, source: str, *, autoescape: bool) -> jinja2.Template:
        with self._lock:
            template = self._compiled.get(name)
        if template is not None:
            return template
        if len(source) > TEMPLATE_MAX_CHARS:
            raise TemplateError(f"{name}: template is larger than {TEMPLATE_MAX_CHARS} chars")
        env = self._envs[autoescape]
        try:
            code = env.compile(source, name=name, filename=name)
            # The environment's globals as one plain dict (they are set once, in `_make_env`):
            # every render copies its template's globals into the context, and a ChainMap
            # (`make_globals`) is walked key by key each time, three times an email.
            template = env.template_class.from_code(env, code, dict(env.globals))
        except Exception as exc:
            raise self._template_error(name, exc) from exc
        with self._lock:
            self._compiled[name] = template
        return template

    def _template_error(self, part: str, exc: BaseException) -> TemplateError:
        if isinstance(exc, jinja2.TemplateSyntaxError):
            where = exc.name or part
            prefix = f"{part} ({where})" if where != part else part
            return TemplateError(f"{prefix} line {exc.lineno}: {exc.message}")
        if isinstance(exc, jinja2.TemplateNotFound):
            return TemplateError(
                f"{part}: template {exc.name!r} is not one of this version's partials"
            )
        message: str | None
        if isinstance(exc, TemplateError):
            message = exc.reason
        elif isinstance(exc, jinja2.TemplateError):
            message = exc.message
        else:
            message = None
        message = message or f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SecurityError):
            message = f"not allowed in templates: {message}"
        frame = _template_frame(exc, self._names)
        if frame is None:
            return TemplateError(f"{part}: {message}")
        name, line = frame
        prefix = part if name == part else f"{part} ({name})"
        return TemplateError(f"{prefix} line {line}: {message}")

    def _run(self, part: str, data: Mapping, *, text: str | None = None) -> str:
        name, autoescape = _PARTS.get(part, (part, True))
        source = getattr(self.sources, part) if text is None else text
        template = self._template(name, source, autoescape=autoescape)
        chunks: list[str] = []
        size = 0
        budget = _loop_budget.set(_LoopBudget())
        try:
            for chunk in template.generate(dict(data)):
                size += len(chunk)
                if size > OUTPUT_MAX_CHARS:
                    raise TemplateError(f"output is larger than {OUTPUT_MAX_CHARS} chars")
                chunks.append(chunk)
        except TemplateError as exc:
            raise self._template_error(name, exc) from exc
        except MemoryError:
            raise
        except Exception as exc:
            raise self._template_error(name, exc) from exc
        finally:
            _loop_budget.reset(budget)
        return "".join(chunks)

    # -- outputs --------------------------------------------------------------------------

    def _document(self, body: str) -> str:
        return (
            f'<!DOCTYPE html>\n<html lang="{escape(self.lang)}"><head><meta charset="utf-8">'
            f"</head><body>{body}</body></html>"
        )

    def print_html(self, data: Mapping, *, drawing: int) -> str:
        """The print rendition as a document, its charts drawn as `drawing` (CHART_DRAWINGS):
        no default, so that every caller says which (PRINT_DRAWING for a new document, the
        archived drawing for a reprint)."""
        if not self.sources.print_html:
            raise TemplateError("print.html: this template has no print version")
        token = _print_drawing.set(drawing_checked(drawing))
        try:
            return self._document(self._run("print_html", data))
        finally:
            _print_drawing.reset(token)

    def static_html(self, name: str) -> str:
        """A static insert as a full document; it sees no customer data, by design."""
        return self._document(
            self._run(f"static:{name}", {}, text=self.sources.static_sections[name])
        )

    def inserts_html(self) -> str:
        """Every static insert, in order, as one document; each starts on a new page."""
        parts = [
            self._run(f"static:{name}", {}, text=source)
            for name, source in self.sources.static_sections.items()
        ]
        return self._document(
            "".join(
                part if index == 0 else f'<div style="break-before: page">{part}</div>'
                for index, part in enumerate(parts)
            )
        )

    def email(self, data: Mapping) -> EmailOutput:
        if not (
            self.sources.email_subject and (self.sources.email_html or self.sources.email_text)
        ):
            raise TemplateError("email: this template has no email version")
        # A subject is a header: newlines in it would let data inject headers.
        subject = _one_line(self._run("email_subject", data))
        html = self._run("email_html", data) if self.sources.email_html else ""
        text = self._run("email_text", data) if self.sources.email_text else ""
        return EmailOutput(subject=subject, html=html, text=text)

    def sms(self, data: Mapping) -> SmsOutput:
        if not self.sources.sms_text:
            raise TemplateError("sms.txt: this template has no SMS version")
        text = self._run("sms_text", data).strip()
        if not text:
            raise TemplateError("sms.txt: the message is empty")
        encoding, segments = sms_segments(text)
        if segments > SMS_MAX_SEGMENTS:
            raise TemplateError(
                f"sms.txt: the message needs {segments} {encoding} segments, "
                f"more than the {SMS_MAX_SEGMENTS} allowed"
            )
        return SmsOutput(text=text, segments=segments, encoding=encoding)

    def push(self, data: Mapping) -> PushOutput:
        if not self.sources.push_body:
            raise TemplateError("push.body: this template has no push version")
        title = _one_line(self._run("push_title", data)) if self.sources.push_title else ""
        body = self._run("push_body", data).strip()
        for part, value, limit in (
            ("push.title", title, PUSH_TITLE_MAX),
            ("push.body", body, PUSH_BODY_MAX),
        ):
            if len(value) > limit:
                raise TemplateError(
                    f"{part}: {len(value)} characters, more than the {limit} allowed"
                )
        if not body:
            raise TemplateError("push.body: the message is empty")
        return PushOutput(title=title, body=body)


def compose_text_channels(composer: Composer, data: Mapping, channels: Iterable[str]) -> dict:
    """What email, SMS and push carry for `data`, in the shape stored on a communication.
    Unbounded: callers go through documents.sandbox.compose_text, which runs this in the
    render worker."""
    rendered: dict[str, Any] = {}
    if "email" in channels:
        email = composer.email(data)
        rendered["email"] = {"subject": email.subject, "html": email.html, "text": email.text}
    if "sms" in channels:
        sms = composer.sms(data)
        rendered["sms"] = {"text": sms.text, "segments": sms.segments, "encoding": sms.encoding}
    if "push" in channels:
        push = composer.push(data)
        rendered["push"] = {"title": push.title, "body": push.body}
    return rendered


@dataclass(frozen=True)
class EmailOutput:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class SmsOutput:
    text: str
    segments: int
    encoding: str


@dataclass(frozen=True)
class PushOutput:
    title: str
    body: str


# -- SMS segment maths ------------------------------------------------------------------------

# GSM 03.38 basic character set and the extension table (each extension char is sent as ESC +
# char, so it costs two septets and must not be split across segments).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def _pack(weights: list[int], *, single: int, multi: int) -> int:
    total = sum(weights)
    if total <= single:
        return 1 if weights else 0
    segments, used = 1, 0
    for weight in weights:
        if used + weight > multi:
            segments, used = segments + 1, 0
        used += weight
    return segments


def sms_segments(text: str) -> tuple[str, int]:
    """(encoding, segments) the way handsets and SMSCs count them."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        weights = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        return "GSM-7", _pack(weights, single=160, multi=153)
    # UCS-2 on the wire is really UTF-16: characters outside the BMP take two code units, and a
    # surrogate pair is never split between segments.
    weights = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return "UCS-2", _pack(weights, single=70, multi=67)


# -- cache ------------------------------------------------------------------------------------


class LruCache(Generic[K, V]):
    """A small thread-safe LRU map whose values are built on a miss (outside the lock: two
    threads may build the same value once each; the first one stored wins)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, build: Callable[[], V]) -> V:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
        built = build()
        with self._lock:
            value = self._items.setdefault(key, built)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


_composers: LruCache[str, Composer] = LruCache(COMPOSER_CACHE_SIZE)


def composer_for(sources: Sources, *, locale: str) -> Composer:
    return _composers.get(sources_key(sources, locale), lambda: Composer(sources, locale=locale))
