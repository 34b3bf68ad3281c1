from __future__ import annotations

from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.settings import api_settings


class CursorPagination(pagination.CursorPagination):
    """Stable under inserts: a page never repeats or skips rows when new ones arrive.

    A `page_size` or `cursor` the API cannot honour is a 400 naming the parameter, not a
    silently different page: a client that asked for 1000 rows must learn it gets at most 500."""

    ordering = "-pk"
    page_size_query_param = "page_size"
    max_page_size = 500
    page_size = api_settings.PAGE_SIZE or 50

    def get_page_size(self, request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = int(raw) if raw.isascii() and raw.isdigit() else 0
        if not 1 <= size <= self.max_page_size:
            raise ValidationError(
                {
                    self.page_size_query_param: [
                        f"Give a whole number from 1 to {self.max_page_size}."
                    ]
                }
            )
        return size

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ValidationError(
                {
                    self.cursor_query_param: [
                        "This cursor is not one the API gave: follow the `next` or `previous` "
                        "link of a page."
                    ]
                }
            ) from None

    def get_paginated_response_schema(self, schema):
        response = super().get_paginated_response_schema(schema)
        response["properties"]["next"]["example"] = "https://ccm.example/api/v1/…?cursor=cD00ODY%3D"
        response["properties"]["previous"]["example"] = None
        return response

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": self.page_size,
                }
                parameter["description"] = (
                    f"Rows per page, 1 to {self.max_page_size} (default {self.page_size}); "
                    "anything else is refused with 400."
                )
            elif parameter["name"] == self.cursor_query_param:
                parameter["description"] = (
                    "Opaque: take it from the `next` or `previous` link of a page. A cursor "
                    "the API did not give is refused with 400."
                )
        return parameters
