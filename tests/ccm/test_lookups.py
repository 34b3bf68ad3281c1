"""`field__any=[…]`: the same rows as `__in`, in a statement whose text does not grow."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

User = get_user_model()


@pytest.fixture
def users(db):
    return [User.objects.create(username=f"lookup-{i}") for i in range(5)]


def test_any_finds_what_in_finds(users):
    ids = [users[0].pk, users[3].pk, 10**12]
    assert sorted(User.objects.filter(pk__any=ids).values_list("pk", flat=True)) == sorted(
        User.objects.filter(pk__in=ids).values_list("pk", flat=True)
    )
    assert set(User.objects.filter(username__any={"lookup-1", "lookup-4"})) == {
        users[1],
        users[4],
    }


def test_an_empty_list_runs_no_statement(users):
    with CaptureQueriesContext(connection) as queries:
        assert list(User.objects.filter(pk__any=[])) == []
        assert User.objects.filter(pk__any=set()).update(first_name="x") == 0
    assert queries.captured_queries == []


def test_the_list_travels_as_one_parameter(users):
    if connection.vendor != "postgresql":
        pytest.skip("elsewhere it is Django's IN")
    sql, params = User.objects.filter(pk__any=[e.pk for e in users]).query.sql_with_params()
    assert "= ANY(%s)" in sql
    assert params == ([e.pk for e in users],)
