"""Server-rendered SVG charts for the dashboard and the PDF reports: pygal with the documents'
chart style, no script, no external reference; a bar may link to the items behind it."""

from __future__ import annotations

import copy
import re
from typing import Any

import pygal
from markupsafe import Markup

from documents.composition import CHART_STYLE

_SCRIPT_RE = re.compile(r"<script\b.*?</script>", re.DOTALL)
_XML_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)


def svg_chart(
    kind: str,
    labels: list[str],
    series: dict[str, list[Any]],
    *,
    title: str = "",
    width: int = 720,
    height: int = 260,
    links: dict[str, list[str]] | None = None,
    value_suffix: str = "",
    chart_id: str = "chart",
    colors: tuple[str, ...] = (),
    counts: bool = False,
) -> Markup:
    """`kind` is bar, stacked or line; `series` maps a name to one value per label (None for
    no value); `links` maps a series to one URL per label (the bar becomes a link); `colors`
    one colour per series; `counts` puts whole numbers on the axis."""
    classes = {"bar": pygal.Bar, "stacked": pygal.StackedBar, "line": pygal.Line}
    chart = classes[kind](
        width=width,
        height=height,
        explicit_size=True,
        title=title or None,
        style=_style(colors),
        show_legend=len(series) > 1,
        legend_at_bottom=True,
        legend_at_bottom_columns=min(len(series), 5) or 1,
        show_minor_y_labels=False,
        y_labels_major_count=5,
        show_x_guides=False,
        x_label_rotation=45 if len(labels) > 10 else 25 if _crowded(labels, width) else 0,
        truncate_label=-1,
        disable_xml_declaration=True,
        js=[],
        pretty_print=False,
        formatter=lambda v: f"{v:g}{value_suffix}",
        print_values=False,
    )
    if counts:
        chart.y_labels = _count_ticks(series, stacked=kind == "stacked")
    chart.uuid = chart_id
    chart.x_labels = labels
    for name, values in series.items():
        urls = (links or {}).get(name)
        points: list[Any] = []
        for index, value in enumerate(values):
            if urls and value is not None:
                points.append({"value": value, "xlink": {"href": urls[index], "target": "_top"}})
            else:
                points.append(value)
        chart.add(name, points, show_dots=kind == "line" and len(values) < 40)
    # pygal embeds its config as a script and stamps a date comment; neither draws anything.
    svg = _SCRIPT_RE.sub("", _XML_COMMENT_RE.sub("", chart.render(is_unicode=True)))
    return Markup(svg)  # noqa: S704 - pygal builds the SVG with an XML serialiser, text escaped


def _crowded(labels: list[str], width: int) -> bool:
    """Whether the labels, written level, would run into each other (about 7 px a character
    at the chart's label size)."""
    return any(len(label) * 7 > width / max(1, len(labels)) for label in labels)


def _style(colors: tuple[str, ...]):
    if not colors:
        return CHART_STYLE
    style = copy.copy(CHART_STYLE)
    style.colors = colors
    return style


def _count_ticks(series: dict[str, list[Any]], *, stacked: bool) -> list[int]:
    """At most six whole-number ticks from 0 to the largest bar."""
    columns = list(zip(*series.values(), strict=True)) if series else []
    if stacked:
        top = max((sum(v or 0 for v in column) for column in columns), default=0)
    else:
        top = max((v or 0 for column in columns for v in column), default=0)
    step = 1
    while top / step > 5:
        # 1, 2, 5, 10, 20, 50, …
        step = step * 5 // 2 if str(step).startswith("2") else step * 2
    if not top:
        return [0, 1]
    return list(range(0, -(-int(top) // step) * step + 1, step))
