"""Django's PostgreSQL backend, with a health check that sends nothing on a healthy connection.

With persistent connections and CONN_HEALTH_CHECKS, Django checks a connection before the first
query of every request with `SELECT 1`: a round trip per request, as much as one of the
request's own statements. A server that ends a session (a restart, `pg_terminate_backend`, an
idle timeout) says so on the socket before it closes it, so an idle connection whose socket has
something to read, or that the driver knows is broken, is checked the old way (and replaced
when that fails); a quiet one is used as it is. A connection cut without a word from the server
(a network gone silent) is found by the request's own first query, as without health checks.

It also gives `prepared_cursor()`: a cursor whose statements PostgreSQL parses and plans once
per connection (see its docstring)."""

from __future__ import annotations

import select
import sys

from django.db.backends.postgresql import base, operations
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.utils.asyncio import async_unsafe
from psycopg import errors, pq


class PreparedCursor(base.ServerBindingCursor):  # type: ignore[misc]  # unstubbed: psycopg's
    """A cursor that binds its parameters on the server and prepares every statement it runs
    (on its first run on the connection; psycopg keeps the last 100 a connection prepared)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(  # type: ignore[misc]
            query, params, prepare=prepare is not False, binary=binary
        )


class DatabaseOperations(operations.DatabaseOperations):
    def last_executed_query(self, cursor, sql, params):
        # What a logged query shows (DEBUG, tests): psycopg keeps no text of a prepared run.
        if isinstance(cursor, PreparedCursor):
            try:
                return self.compose_sql(sql, params)
            except errors.DataError:  # as Django's own, for values it cannot write out
                return None
        return super().last_executed_query(cursor, sql, params)


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def is_usable(self) -> bool:
        if self.connection is None or self.connection.closed:
            return False
        pgconn = self.connection.pgconn
        if (
            pgconn.status == pq.ConnStatus.OK
            and pgconn.transaction_status == pq.TransactionStatus.IDLE
        ):
            # poll, not select: a process with more than 1,024 open files has sockets
            # select cannot watch.
            poller = select.poll()
            try:
                poller.register(pgconn.socket, select.POLLIN)
                said_something = bool(poller.poll(0))
            except (OSError, ValueError):
                said_something = True  # cannot tell: ask the server as Django does
            if not said_something:
                return True
        return super().is_usable()

    @async_unsafe
    def prepared_cursor(self):
        """A Django cursor (the queries logged, the execute wrappers applied) whose statements
        are prepared: PostgreSQL parses and plans each once per connection, not on every run.
        For the few statements a request runs every time with nothing but its values changed
        (the API's intake): Django binds parameters on the client and never prepares, so a
        server-side plan is never reused. Their plans are generic after five runs; use it only
        for statements whose best plan does not depend on the values (a unique key, an
        INSERT). Behind a pooler in transaction mode, named prepared statements need
        PgBouncer 1.21+ (`max_prepared_statements`); `DB_PREPARED_STATEMENTS=false` turns
        this off (`ccm.rows.prepared_cursor` then gives Django's cursor)."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            if self.connection.prepare_threshold is None:
                # Django leaves psycopg's automatic preparing off (its cursors bind on the
                # client, and those never prepare); a threshold lets a cursor ask for it.
                # Never reached: only a PreparedCursor prepares, and at once.
                self.connection.prepare_threshold = sys.maxsize
            cursor = PreparedCursor(self.connection)  # type: ignore[call-arg]
            # As Django's own cursors: the session's time zone if the connection's differs.
            loader = self.connection.adapters.get_loader(base.TIMESTAMPTZ_OID, pq.Format.TEXT)
            if self.timezone != loader.timezone:
                register_tzloader(self.timezone, cursor)
        self.validate_thread_sharing()
        wrap = self.make_debug_cursor if self.queries_logged else self.make_cursor
        return wrap(cursor)  # type: ignore[arg-type]  # the stubs want a wrapper; Django wraps
