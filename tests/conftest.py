from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.db.backends.postgresql.operations import DatabaseOperations

from ccm.roles import Role

_execute_sql_flush = DatabaseOperations.execute_sql_flush
_sql_flush = DatabaseOperations.sql_flush


def _sql_flush_by_delete(self, style, tables, *, reset_sequences=False, allow_cascade=False):
    # The flush after each transactional test (browser tests, real clusters) empties tables
    # that hold a few rows. PostgreSQL's TRUNCATE gives every table new files whatever it holds:
    # ~6 s for the ~90 tables on a loaded machine, against ~0.3 s for a DELETE of each. The
    # flush runs as a replica session (below), where foreign-key triggers do not fire, so the
    # order of the deletes does not matter; the tables end as empty either way.
    if reset_sequences or allow_cascade or not tables:
        return _sql_flush(
            self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
        )
    # One statement list in one round trip (no parameters: table names quoted by the backend).
    return [" ".join(f"DELETE FROM {self.quote_name(table)};" for table in tables)]  # noqa: S608


def _flush_as_replica(self, sql_list):
    # Transactional tests empty the database with TRUNCATE, which the audit and consent tables
    # refuse (a statement trigger); the test flush runs as a replica session, as a restore
    # would, where triggers do not fire.
    with self.connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
    try:
        _execute_sql_flush(self, sql_list)
        # The database cache's table is no model's, so the flush leaves it: a rate-limit count
        # or a "drain pending" flag committed by one transactional test would outlive it.
        cache_table = settings.CACHES["default"].get("LOCATION", "")
        backend = settings.CACHES["default"].get("BACKEND", "")
        if backend.endswith("DatabaseCache") and cache_table in (
            self.connection.introspection.table_names()
        ):
            with self.connection.cursor() as cursor:
                table = self.connection.ops.quote_name(cache_table)  # from settings, quoted
                cursor.execute(f"DELETE FROM {table}")  # noqa: S608
    finally:
        with self.connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = DEFAULT")


DatabaseOperations.execute_sql_flush = _flush_as_replica  # type: ignore[method-assign]
DatabaseOperations.sql_flush = _sql_flush_by_delete  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _test_settings(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    # Real hashing costs ~0.5 s a user; what the tests check does not depend on it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Anymail's test backend records what would reach the ESP (django.core.mail.outbox).
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    # And SMS into notifications.channels.sms.outbox, push into notifications.channels.push's.
    settings.CCM_SMS_BACKEND = "notifications.channels.sms.LocmemSmsBackend"
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.LocmemPushBackend"


@pytest.fixture
def make_user(db, django_user_model):
    def make(username: str, *roles: str, **extra):
        user = django_user_model.objects.create_user(
            username=username, password="pw-for-tests", is_staff=True, **extra
        )
        for role in roles:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def reviewer(make_user):
    return make_user("rita", Role.COMPLIANCE_REVIEWER)


@pytest.fixture
def reviewer2(make_user):
    return make_user("rory", Role.COMPLIANCE_REVIEWER)


@pytest.fixture
def author(make_user):
    return make_user("alex", Role.TEMPLATE_AUTHOR)


@pytest.fixture
def agent(make_user):
    return make_user("agnes", Role.SERVICE_AGENT)


@pytest.fixture
def ops(make_user):
    return make_user("otto", Role.OPERATIONS)


@pytest.fixture
def admin_user(make_user):
    return make_user("root", is_superuser=True)
