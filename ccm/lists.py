"""Lists that stay fast at a bank's size (a million communications, a hundred thousand cases):
what every back-office list and search shares.

- `CountLimitedPaginator` never counts a whole table: it counts exactly up to `EXACT_COUNT_LIMIT`
  rows (a bounded `COUNT(*)` over `LIMIT n + 1`) and beyond that takes PostgreSQL's estimate.
- `ScaledListAdmin.search_pks` answers a search as a UNION of lookups that each have an index
  built for them (see ccm/search.py).
- `distinct_values` and `IndexedValuesFilter` list a column's values for a filter by hopping
  through its index (a recursive "loose index scan") instead of `SELECT DISTINCT` over the table.
- `ScaledListAdmin` puts these together for an admin changelist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Model, QuerySet
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _

from ccm.search import search_term

# Up to here a list's count is exact; beyond it, an estimate ("about 1,000,000").
EXACT_COUNT_LIMIT = 10_000
# Stands for a row's primary key in its change URL, resolved once a page.
_PK = "0ccm-pk0"
# A filter offering more values than this is no use as a list of links.
DISTINCT_VALUES_LIMIT = 200


def estimated_count(queryset: QuerySet) -> int:
    """The planner's estimate of how many rows `queryset` returns (no rows are read)."""
    plan = json.loads(queryset.order_by().explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def capped_count(queryset: QuerySet, cap: int) -> int:
    """How many rows, counted up to `cap` + 1 (reading at most that many index entries): a
    result above `cap` means "more than `cap`", as a badge shows it ("99+")."""
    return queryset.order_by()[: cap + 1].count()


def capped_counts(querysets: Mapping[str, QuerySet], cap: int) -> dict[str, int]:
    """`capped_count` of each queryset, all in one statement (a screen's tabs: one round trip
    however many tabs, each reading at most `cap` + 1 index entries)."""
    parts: list[str] = []
    params: list = []
    for queryset in querysets.values():
        try:
            sql, part_params = queryset.order_by().values("pk")[: cap + 1].query.sql_with_params()
        except EmptyResultSet:  # .none(), or a filter on an empty list
            parts.append("0")
            continue
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) AS capped)")  # noqa: S608 (Django SQL, params apart)
        params.extend(part_params)
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        return dict(zip(querysets, cursor.fetchone(), strict=True))


def limited_count(queryset: QuerySet, limit: int = EXACT_COUNT_LIMIT) -> int:
    """The exact count up to `limit`; past it, the planner's estimate (at least `limit` + 1)."""
    exact = capped_count(queryset, limit)
    if exact <= limit:
        return exact
    return max(estimated_count(queryset), limit + 1)


class CountLimitedPaginator(Paginator):
    """A paginator whose count never reads a whole table (see `limited_count`). Past the limit
    the page count is approximate; a page beyond the last rows is simply empty."""

    @cached_property
    def count(self) -> int:  # type: ignore[override]
        if isinstance(self.object_list, QuerySet):
            return limited_count(self.object_list)
        return len(self.object_list)


def distinct_values(model: type[Model], field: str, limit: int = DISTINCT_VALUES_LIMIT) -> list:
    """The distinct values of `field`, in order, found by hopping through an index that starts
    with it: one index probe a value, however many rows each value has."""
    table = connection.ops.quote_name(model._meta.db_table)
    column = connection.ops.quote_name(model._meta.get_field(field).column)  # type: ignore[union-attr,arg-type]
    # Identifiers come from the model, quoted; the only value is a parameter.
    sql = f"""
        WITH RECURSIVE hop(value, n) AS (
            (SELECT {column}, 1 FROM {table} WHERE {column} IS NOT NULL ORDER BY {column} LIMIT 1)
            UNION ALL
            SELECT (SELECT {column} FROM {table} WHERE {column} > hop.value
                    ORDER BY {column} LIMIT 1), hop.n + 1
            FROM hop WHERE hop.value IS NOT NULL AND hop.n < %s
        )
        SELECT value FROM hop WHERE value IS NOT NULL
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


class IndexedValuesFilter(admin.AllValuesFieldListFilter):
    """Django's "all values" filter, with its values read through the column's index."""

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        self.lookup_choices = distinct_values(model, field.name)  # type: ignore[assignment]


class ScaledChangeList(ChangeList):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Each row's link carries the list's filters back to the change page. Django adds them
        # a row at a time, resolving the row's URL against every admin URL to do it (a sixth of
        # a filtered page's Python); url_for_result adds them instead, computed once a page.
        self.row_filters, self.preserved_filters = self.preserved_filters, ""

    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer(*getattr(self.model_admin, "list_defer", ()))

    @cached_property
    def _change_url(self) -> tuple[str, str]:
        url = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(_PK,),
            current_app=self.model_admin.admin_site.name,
        )
        before, _pk, after = url.partition(_PK)
        return before, after

    def url_for_result(self, result) -> str:
        """Django's link to a row's change page (with the list's filters), with the URL
        resolved once a page rather than once a row (a sixth of the rows' time)."""
        before, after = self._change_url
        url = before + str(quote(getattr(result, self.pk_attname))) + after
        return f"{url}?{self.row_filters}" if self.row_filters else url


class ScaledListAdmin(admin.ModelAdmin):
    """A changelist for a table of millions: no whole-table count (neither the paginator's nor
    the "N total" one), a search made of indexed lookups (`search_pks`), and the list's rows
    read without the large fields no column shows (`list_defer`)."""

    paginator = CountLimitedPaginator
    show_full_result_count = False
    # Rendering a row costs more than reading it: 50 a page keeps a page well under 250 ms.
    list_per_page = 50
    list_defer: tuple[str, ...] = ()

    def get_changelist(self, request, **kwargs):
        return ScaledChangeList

    @admin.display(description=mark_safe('<input type="checkbox" id="action-toggle">'))
    def action_checkbox(self, obj):
        """Django's row checkbox, the same markup written out: Django renders a form widget
        through the template engine for every row, which cost a third of a page's rows."""
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            obj.pk,
            format_html(_("Select this object for an action - {}"), str(obj)),
        )

    def search_pks(self, term: str) -> QuerySet:
        """The primary keys matching `term`: a UNION of indexed lookups (ccm/search.py).
        Without it, a small table's list searches its `search_fields` as Django does."""
        raise NotImplementedError

    def get_search_results(self, request, queryset, search_term_raw):
        if type(self).search_pks is ScaledListAdmin.search_pks:
            return super().get_search_results(request, queryset, search_term_raw)
        term = search_term(search_term_raw)
        if not term:
            return queryset, False
        return queryset.filter(pk__in=self.search_pks(term)), False
