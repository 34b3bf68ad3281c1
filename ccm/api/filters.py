"""Query-parameter filters shared by the API's list endpoints."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField


class _UtcIsoDateTimeField(IsoDateTimeField):
    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        # ISO 8601 allows offsets PostgreSQL does not (beyond ±15:59): compare in UTC instead.
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError(
                "This date and time is out of range.", code="invalid"
            ) from None


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 date-time in any offset, compared as the instant it names."""

    field_class = _UtcIsoDateTimeField
