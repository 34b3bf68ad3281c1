"""Database helpers used by migrations."""

from __future__ import annotations

from django.db import migrations

_FUNCTION = """
CREATE OR REPLACE FUNCTION ccm_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def _guard(table: str, suffix: str, event: str, each: str) -> migrations.RunPython:
    trigger = f"{table}_{suffix}"

    def forward(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(_FUNCTION, params=None)
            schema_editor.execute(
                f"CREATE TRIGGER {trigger} BEFORE {event} ON {table} "
                f"FOR EACH {each} EXECUTE FUNCTION ccm_append_only()",
                params=None,
            )

    def backward(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}", params=None)

    return migrations.RunPython(forward, backward)


def append_only(table: str) -> migrations.RunPython:
    """A migration operation that makes `table` reject UPDATE and DELETE on PostgreSQL.

    Other databases have no such trigger; there the services are the only writers."""
    return _guard(table, "append_only", "UPDATE OR DELETE", "ROW")


def no_truncate(table: str) -> migrations.RunPython:
    """A migration operation that makes `table` reject TRUNCATE on PostgreSQL (a statement
    trigger: the row triggers of append_only do not fire for TRUNCATE)."""
    return _guard(table, "no_truncate", "TRUNCATE", "STATEMENT")


def trigram_index(table: str, column: str, name: str) -> migrations.RunPython:
    """A GIN trigram index on UPPER(column), which is what Django's `icontains` compares on
    PostgreSQL (`UPPER(col::text) LIKE UPPER('%term%')`), so a search for a part of a name,
    reference or email reads the index instead of every row. PostgreSQL only (needs the
    pg_trgm extension: `TrigramExtension()` before it); other databases search without it."""

    def forward(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" '
                f'USING gin ((UPPER("{column}"::text)) gin_trgm_ops)',
                params=None,
            )

    def backward(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f'DROP INDEX IF EXISTS "{name}"', params=None)

    return migrations.RunPython(forward, backward, elidable=False)
