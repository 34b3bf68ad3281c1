"""Searches that read indexes: a search is a UNION of lookups that each have an index built for
them (trigram GIN indexes on UPPER(column) for "contains", made by the migrations with
`ccm.dbutils.trigram_index`; b-tree indexes for exact values and prefixes). An OR of
`icontains` across a join, as Django's admin builds from `search_fields`, makes PostgreSQL read
every row of both tables (seconds at a million rows); each indexed lookup takes milliseconds.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from django.db.models import Q, QuerySet

# Trigram indexes answer "contains" from three characters on; a shorter term matches exactly.
TRIGRAM_MIN = 3


def search_term(raw: str) -> str:
    """The term as typed, without surrounding quotes and with single spaces: a search is for
    the phrase ("Jane Smith"), not for each word anywhere."""
    return " ".join(raw.strip().strip("\"'").split())


def contains(field: str, term: str) -> Q:
    """`field` contains `term` (case-insensitive, through its trigram index); a term shorter
    than a trigram matches the whole value instead, which the index cannot help with."""
    if len(term) < TRIGRAM_MIN:
        return Q(**{f"{field}__iexact": term})
    return Q(**{f"{field}__icontains": term})


def as_int(term: str) -> int | None:
    return int(term) if re.fullmatch(r"\d{1,18}", term) else None


def as_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term)
    except ValueError:
        return None


def matching_pks(parts: Iterable[QuerySet]) -> QuerySet:
    """The UNION of `parts`, each a one-column queryset of primary keys answered by its own
    index: `queryset.filter(pk__in=matching_pks(...))` instead of ORed lookups."""
    first, *rest = (part.order_by() for part in parts)
    return first.union(*rest) if rest else first
