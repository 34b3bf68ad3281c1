"""`field__any=[…]`: membership in a list sent as ONE array parameter.

Django writes `field__in=[…]` as `IN (%s, %s, …)`, one placeholder a value. For the pipeline's
chunks (250 ids, 1,250 history steps) that costs in Python on every statement: psycopg splits
and quotes the long query text value by value (it caches only short queries), and PostgreSQL
parses a new statement for every list length. `field = ANY(%s)` with the list as one array is
the same condition in a short, constant statement. Elsewhere (SQLite) it is Django's `IN`.
"""

from __future__ import annotations

from django.core.exceptions import EmptyResultSet
from django.db.models import Field, ForeignObject, Lookup
from django.db.models.lookups import In


class AnyOf(Lookup):
    lookup_name = "any"

    def get_prep_lookup(self):
        return [self.lhs.output_field.get_prep_value(v) for v in self.rhs]

    def as_sql(self, compiler, connection):
        if not self.rhs:
            raise EmptyResultSet  # as `__in=[]`: no statement at all
        if connection.vendor != "postgresql":
            return In(self.lhs, self.rhs).as_sql(compiler, connection)
        lhs, params = self.process_lhs(compiler, connection)
        field = self.lhs.output_field
        values = [field.get_db_prep_value(v, connection, prepared=True) for v in self.rhs]
        return f"{lhs} = ANY(%s)", [*params, values]


def register() -> None:
    # Relations keep lookups of their own: `customer_id__any` needs it on them as well.
    for field in (Field, ForeignObject):
        field.register_lookup(AnyOf)
