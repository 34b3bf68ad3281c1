"""Set-based writes for chunked work: many rows changed or inserted in one statement.

`update_rows` gives each row its own values in one UPDATE … FROM (VALUES …); `update_returning`
moves the rows a guarded queryset matches and returns what it changed; `insert_rows` and
`insert_like` write many rows with one INSERT … RETURNING, or by COPY above `COPY_FROM` rows.
Model-agnostic: the pipeline, incidents, send jobs and campaigns all write through these, and
fields such as django-fsm's protected state fields are written as SQL writes them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.db.models import QuerySet
from django.db.models.sql import UpdateQuery
from django.utils import timezone

# Below this many rows one INSERT … RETURNING is cheaper than drawing ids and a COPY.
COPY_FROM = 50


def chunks(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def id_ranges(ids: Iterable[int]) -> list[list[int]]:
    """[[first, last], …] of consecutive runs: an exact, short list of ids for the audit log."""
    ranges: list[list[int]] = []
    for pk in sorted(ids):
        if ranges and pk == ranges[-1][1] + 1:
            ranges[-1][1] = pk
        else:
            ranges.append([pk, pk])
    return ranges


def _db_value(field, value: Any) -> Any:
    if value is None:
        return None
    if field.get_internal_type() == "JSONField":
        return json.dumps(value)
    return value


def _update_rows_portable(
    model, fields: list[str], rows: Mapping[int, tuple], *, where_state: str | None = None
) -> None:
    """`update_rows` through Django's `bulk_update` (SQLite, the `make run` default). Values go
    straight into each instance's fields: a protected state field refuses `setattr`, and this
    is a write of states the caller has already decided, as the PostgreSQL statement is."""
    objs = []
    for pk, values in rows.items():
        obj = model(pk=pk)
        for name, value in zip(fields, values, strict=True):
            obj.__dict__[model._meta.get_field(name).attname] = value
        objs.append(obj)
    queryset = model.objects.all()
    if where_state is not None:
        queryset = queryset.filter(state=where_state)
    queryset.bulk_update(objs, fields)


def update_rows(
    model, fields: list[str], rows: Mapping[int, tuple], *, where_state: str | None = None
) -> None:
    """Set per-row values of `fields` on many rows in one statement (only on rows still in
    `where_state`, when given).

    PostgreSQL: one UPDATE … FROM jsonb_to_recordset, a few milliseconds for a chunk. Elsewhere
    Django's `bulk_update` (a CASE per field), which is correct but costs ~1 ms a row."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        _update_rows_portable(model, fields, rows, where_state=where_state)
        return
    opts = model._meta
    sets, source, param = _per_row_source(model, fields, rows)
    # Identifiers come from the model's metadata, every value is a parameter.
    sql = (
        f"UPDATE {qn(opts.db_table)} AS t SET {sets} "  # noqa: S608
        f"FROM {source} WHERE t.{qn(opts.pk.column)} = v.id"
    )
    params: list[Any] = [param]
    if where_state is not None:
        sql += " AND t.state = %s"
        params.append(where_state)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _per_row_source(
    model, fields: Sequence[str], rows: Mapping[int, tuple]
) -> tuple[str, str, str]:
    """The SET list (`column = v.cN`, N the field's place in `fields`), the FROM source
    (`jsonb_to_recordset(%s::jsonb) AS v(id, c0, …)`) and its one parameter, for giving each
    row of `rows` (primary key → values of `fields`) its own values in an UPDATE.

    The rows travel as ONE JSON document read back with jsonb_to_recordset: no per-element
    array quoting (psycopg escapes every text[] element with a regex — half a millisecond a
    row for rendered emails), and JSON columns are nested as they are, not as strings."""
    columns = [model._meta.get_field(name) for name in fields]
    is_json = [f.get_internal_type() == "JSONField" for f in columns]
    records = [
        {
            "id": pk,
            **{
                f"c{i}": value if is_json[i] or value is None else str(value)
                for i, value in enumerate(values)
            },
        }
        for pk, values in rows.items()
    ]
    sets = ", ".join(
        f"{qn(f.column)} = v.c{i}"
        if is_json[i]
        else f"{qn(f.column)} = v.c{i}::{f.db_type(connection)}"
        for i, f in enumerate(columns)
    )
    names = ", ".join(
        ["id bigint"] + [f"c{i} {'jsonb' if is_json[i] else 'text'}" for i in range(len(columns))]
    )
    source = f"jsonb_to_recordset(%s::jsonb) AS v({names})"
    return sets, source, json.dumps(records, cls=DjangoJSONEncoder)


def update_returning(
    locked: QuerySet,
    values: Mapping[str, Any],
    returning: Sequence[str],
    *,
    per_row: tuple[Sequence[str], Mapping[int, tuple]] | None = None,
) -> list[tuple]:
    """Set `values` on the rows of `locked` (a `select_for_update` queryset: the guard of a
    move) and return their `returning` fields (the primary key first), in key order.

    PostgreSQL: ONE statement, `UPDATE … WHERE id IN (SELECT … FOR UPDATE [SKIP LOCKED])
    RETURNING …`, instead of a locking read and an update by the ids it gave: a round trip and
    a second pass over the chunk's index entries less, for every claim and move of a chunk.
    Elsewhere the read, then the update.

    `per_row` = (fields, {pk: values}): each row also gets its own values of `fields`, in the
    same statement (one new version of each row, not two). Rows of `locked` without an entry
    there are left alone: give every row one."""
    model = locked.model
    if connection.vendor != "postgresql":
        rows = list(locked.order_by("pk").values_list(*returning))
        model.objects.filter(pk__in=[row[0] for row in rows]).update(**values)
        if per_row is not None:
            fields, by_pk = per_row
            moved = {row[0] for row in rows}
            update_rows(model, list(fields), {pk: v for pk, v in by_pk.items() if pk in moved})
        return rows
    query = model.objects.filter(pk__in=locked.values("pk")).query.chain(UpdateQuery)
    query.add_update_values(values)
    sql, params = query.get_compiler(connection=connection).as_sql()
    opts = model._meta
    if per_row is not None:
        # Django writes `UPDATE "table" SET … WHERE …` (the values are parameters, the guard a
        # subquery): the per-row columns join the SET list, their source the FROM clause.
        fields, by_pk = per_row
        sets, source, param = _per_row_source(model, fields, by_pk)
        head, where = sql.split(" WHERE ", 1)
        table = qn(opts.db_table)
        sql = f"{head}, {sets} FROM {source} WHERE {table}.{qn(opts.pk.column)} = v.id AND {where}"
        set_params = head.count("%s")
        params = (*params[:set_params], param, *params[set_params:])
    columns = ", ".join(
        f"{qn(opts.db_table)}.{qn((opts.pk if name == 'pk' else opts.get_field(name)).column)}"
        for name in returning
    )
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {columns}", params)
        return sorted(cursor.fetchall())


def insert_rows(model, objs: list) -> None:
    """Insert many new rows and set their primary keys.

    PostgreSQL: ids drawn from the table's sequence, then COPY (several times faster than
    `bulk_create`'s INSERT … RETURNING for thousands of rows). Elsewhere `bulk_create`."""
    if not objs:
        return
    if connection.vendor != "postgresql" or len(objs) < COPY_FROM:
        model.objects.bulk_create(objs, batch_size=1000)
        return
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    now = timezone.now()
    for obj in objs:
        for f in fields:
            if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
                setattr(obj, f.attname, now)
    ids = _copy_rows(model, fields, ([getattr(obj, f.attname) for f in fields] for obj in objs))
    for obj, pk in zip(objs, ids, strict=True):
        obj.pk = pk
        obj._state.adding = False


def insert_like(model, template, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert one row per mapping of field values, every other field as on `template` (an
    unsaved instance made once: its defaults), and return the new ids in order. For the rows
    a chunk makes by the hundred (its deliveries), a model instance per row would cost more
    than writing them."""
    if not rows:
        return []
    if connection.vendor != "postgresql" or len(rows) < COPY_FROM:
        objs = [model(**{**_field_values(template), **row}) for row in rows]
        model.objects.bulk_create(objs, batch_size=1000)
        return [obj.pk for obj in objs]
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    now = timezone.now()
    base = {f.attname: getattr(template, f.attname) for f in fields}
    base.update(
        {
            f.attname: now
            for f in fields
            if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
        }
    )
    return _copy_rows(
        model, fields, ([row.get(f.attname, base[f.attname]) for f in fields] for row in rows)
    )


def _field_values(obj) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def _copy_rows(model, fields: list, rows: Iterable[list[Any]]) -> list[int]:
    """COPY `rows` (values of `fields`, in order, the primary key left out) with ids drawn
    from the table's sequence first; the ids in order. PostgreSQL only."""
    rows = list(rows)
    opts = model._meta
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [opts.db_table, opts.pk.column, len(rows)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        columns = ", ".join(qn(f.column) for f in (opts.pk, *fields))
        with cursor.cursor.copy(f"COPY {qn(opts.db_table)} ({columns}) FROM STDIN") as copy:
            for pk, values in zip(ids, rows, strict=True):
                copy.write_row(
                    [pk, *(_db_value(f, v) for f, v in zip(fields, values, strict=True))]
                )
    return ids


def prepared_cursor():
    """A cursor whose statements PostgreSQL prepares (parses and plans once per connection;
    ccm/postgresql's `prepared_cursor`), for a statement run on every request of a hot path.
    Django's own cursor on another database, or with DB_PREPARED_STATEMENTS off."""
    make = getattr(connection, "prepared_cursor", None)
    if make is None or not settings.DB_PREPARED_STATEMENTS:
        return connection.cursor()
    return make()


def qn(name: str) -> str:
    return connection.ops.quote_name(name)
