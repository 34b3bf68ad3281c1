"""Django's PostgreSQL backend, with a health check that sends nothing on a healthy connection.

With persistent connections and CONN_HEALTH_CHECKS, Django checks a connection before the first
query of every request with `SELECT 1`: a round trip per request, as much as one of the
request's own statements. A server that ends a session (a restart, `pg_terminate_backend`, an
idle timeout) says so on the socket before it closes it, so an idle connection whose socket has
something to read, or that the driver knows is broken, is checked the old way (and replaced
when that fails); a quiet one is used as it is. A connection cut without a word from the server
(a network gone silent) is found by the request's own first query, as without health checks."""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
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
