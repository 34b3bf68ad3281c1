from __future__ import annotations

from datetime import UTC, date, time
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from notifications.customers.assets.models import Asset, AssetKind, ServicePoint
from notifications.models import Customer
from notifications.statements.models import CustomerTariff, Meter, Tariff, TariffBand
from tests.notifications.conftest import publish, sync_tasks  # noqa: F401


def make_meter(ref: str, *, serial: str | None = None, **meter) -> Meter:
    customer, _ = Customer.objects.get_or_create(
        external_ref=ref,
        defaults={"name": f"Customer {ref}", "postal_address": ["1 High St", "Leeds LS1 1AA"]},
    )
    region, _ = Asset.objects.get_or_create(
        code="north", defaults={"kind": AssetKind.REGION, "path": "north/"}
    )
    asset = Asset.objects.create(
        code=f"m-{ref}", kind=AssetKind.METER, parent=region, path=f"north/m-{ref}/"
    )
    point = ServicePoint.objects.create(
        code=f"sp-{ref}", customer=customer, asset=asset, address=f"{ref} Mill Lane, Leeds"
    )
    return Meter.objects.create(serial=serial or f"E-{ref}", service_point=point, **meter)


def make_tariff(code="flat", *, bands=(("all day", "00:00", "00:00", "0.2450"),), **fields):
    defaults = {
        "name": code.title(),
        "standing_charge": Decimal("0.50"),
        "vat_rate": Decimal("0.05"),
        "valid_from": date(2024, 1, 1),
    }
    defaults.update(fields)
    tariff = Tariff.objects.create(code=code, **defaults)
    for name, start, end, rate in bands:
        TariffBand.objects.create(
            tariff=tariff,
            name=name,
            start_time=time.fromisoformat(start),
            end_time=time.fromisoformat(end),
            unit_rate=Decimal(rate),
        )
    return tariff


def put_on(customer, tariff, since=date(2024, 1, 1)):
    return CustomerTariff.objects.create(customer=customer, tariff=tariff, valid_from=since)


@pytest.fixture
def meter(db):
    return make_meter("A-1")


@pytest.fixture
def api(db):
    client = APIClient()
    key = api_key_create(
        name="mdm", scopes=["readings:write", "statements:read", "statements:write"]
    ).key
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


def half_hours(first_day, days: int, value="0.5", serial: str = ""):
    """Half-hourly rows from local midnight of `first_day` (UTC in tests) for `days` days."""
    from datetime import datetime, timedelta

    start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    return [
        {
            "meter": serial,
            "start": (start + timedelta(minutes=30 * n)).isoformat(),
            "value": value(n) if callable(value) else value,
        }
        for n in range(days * 48)
    ]


def load(rows) -> None:
    from notifications.statements.readings import MAX_READINGS, readings_ingest

    for i in range(0, len(rows), MAX_READINGS):
        readings_ingest(rows=rows[i : i + MAX_READINGS])


@pytest.fixture
def usage_statement(author, reviewer):
    from documents.bundle import read_folder
    from documents.demo import LIBRARY

    return publish(read_folder(LIBRARY / "usage_statement"), author=author, reviewer=reviewer)
