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
