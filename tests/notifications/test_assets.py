"""The asset tree and service points: loaded by API and CSV, and who is served under an asset."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from notifications.customers.assets import selectors
from notifications.customers.assets.models import Asset, ServicePoint
from notifications.models import Customer

TREE = [
    {"code": "tx-7", "kind": "transformer", "parent": "feeder-1"},  # child before its parent
    {"code": "north", "kind": "region", "name": "North"},
    {"code": "feeder-1", "kind": "feeder", "parent": "north"},
    {"code": "feeder-2", "kind": "feeder", "parent": "north"},
    {"code": "m-1", "kind": "meter", "parent": "tx-7"},
    {"code": "m-2", "kind": "meter", "parent": "feeder-2"},
]


@pytest.fixture
def api(db):
    client = APIClient()
    key = api_key_create(name="gis", scopes=["customers:write"]).key
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


def test_the_tree_loads_in_any_order_and_finds_customers_under_any_asset(api):
    response = api.post("/api/v1/assets", {"items": TREE}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == {"created": 6, "updated": 0}
    assert Asset.objects.get(code="m-1").path == "north/feeder-1/tx-7/m-1/"
    for ref in ("A", "B"):
        Customer.objects.create(external_ref=ref, name=ref)
    points = [
        {"code": "sp-a", "customer": "A", "asset": "m-1", "postcode": "LS6 3QT"},
        {"code": "sp-b", "customer": "B", "asset": "m-2"},
    ]
    assert api.post("/api/v1/service-points", {"items": points}, format="json").status_code == 200
    a, b = Customer.objects.get(external_ref="A"), Customer.objects.get(external_ref="B")
    assert selectors.customer_ids_under(asset=Asset.objects.get(code="feeder-1")) == [a.pk]
    assert selectors.customer_ids_under(asset=Asset.objects.get(code="north")) == [a.pk, b.pk]


def test_moving_an_asset_moves_its_subtree(api):
    api.post("/api/v1/assets", {"items": TREE}, format="json")
    api.post(
        "/api/v1/assets",
        {"items": [{"code": "tx-7", "kind": "transformer", "parent": "feeder-2"}]},
        format="json",
    )
    assert Asset.objects.get(code="m-1").path == "north/feeder-2/tx-7/m-1/"


def test_an_unknown_parent_or_asset_is_a_422_naming_the_item_and_nothing_is_stored(api):
    bad = [{"code": "x", "kind": "meter", "parent": "nowhere"}, {"code": "y", "kind": "pylon"}]
    response = api.post("/api/v1/assets", {"items": bad}, format="json")
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"items[0].parent", "items[1].kind"}
    assert not Asset.objects.exists()
    response = api.post(
        "/api/v1/service-points",
        {"items": [{"code": "sp", "customer": "nobody", "asset": "m-1"}]},
        format="json",
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "items[0].customer"


def test_csv_import(db, tmp_path):
    Customer.objects.create(external_ref="C-1", name="Ada")
    assets = tmp_path / "assets.csv"
    assets.write_text("code,kind,parent,name\nnorth,region,,North\nm-1,meter,north,\n")
    points = tmp_path / "points.csv"
    points.write_text("code,customer,asset,address,postcode\nsp-1,C-1,m-1,1 Row,LS6 3QT\n")
    call_command("import_assets", assets=assets, service_points=points)
    assert ServicePoint.objects.get().asset.path == "north/m-1/"
    points.write_text("code,customer,asset,address,postcode\nsp-2,C-9,m-1,,\n")
    with pytest.raises(CommandError, match="row 2: customer"):
        call_command("import_assets", service_points=points)
