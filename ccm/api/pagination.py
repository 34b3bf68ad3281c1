from __future__ import annotations

from rest_framework import pagination


class CursorPagination(pagination.CursorPagination):
    """Stable under inserts: a page never repeats or skips rows when new ones arrive."""

    ordering = "-pk"
    page_size_query_param = "page_size"
    max_page_size = 500
