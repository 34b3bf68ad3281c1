"""Writes to the asset tree and the service points: bulk upserts, used by the API and the CSV
import alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Value
from django.db.models.functions import Concat, Length, Substr

from ccm import audit
from notifications.customers.assets.models import PATH_SEP, Asset, AssetKind, ServicePoint
from notifications.models import Customer

MAX_ITEMS = 5000


@dataclass
class UpsertError(Exception):
    """Some items are invalid; nothing was written. `errors`: [{"index", "field", "message"}]."""

    errors: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.errors)} item(s) are invalid; nothing was stored."


def _text(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    return "" if value is None else str(value).strip()


@transaction.atomic
def assets_upsert(*, items: Sequence[Mapping[str, Any]], by=None) -> dict[str, int]:
    """Create or update assets by code: {"code", "kind", "parent" (a code or empty), "name"}.
    Parents may come in the same call, in any order. All or nothing."""
    errors: list[dict] = []
    wanted: dict[str, dict[str, str]] = {}
    for index, item in enumerate(items):
        code, kind = _text(item, "code"), _text(item, "kind")
        if not code or PATH_SEP in code:
            errors.append({"index": index, "field": "code", "message": "a code without '/'"})
            continue
        if kind not in AssetKind.values:
            known = ", ".join(AssetKind.values)
            errors.append({"index": index, "field": "kind", "message": f"one of {known}"})
            continue
        wanted[code] = {"kind": kind, "parent": _text(item, "parent"), "name": _text(item, "name")}
    parent_codes = {w["parent"] for w in wanted.values() if w["parent"]} - set(wanted)
    existing = {a.code: a for a in Asset.objects.filter(code__in=set(wanted) | parent_codes)}
    for index, item in enumerate(items):
        parent = _text(item, "parent")
        if parent and parent not in wanted and parent not in existing:
            errors.append({"index": index, "field": "parent", "message": f"no asset {parent!r}"})
    if errors:
        raise UpsertError(errors)
    created = updated = 0
    done: set[str] = set()

    def save(code: str, trail: tuple[str, ...] = ()) -> Asset:
        nonlocal created, updated
        if code in done or code not in wanted:
            return existing[code]
        if code in trail:
            raise UpsertError(
                [{"index": -1, "field": "parent", "message": f"{code} is its own ancestor"}]
            )
        spec = wanted[code]
        parent = save(spec["parent"], (*trail, code)) if spec["parent"] else None
        path = (parent.path if parent else "") + code + PATH_SEP
        asset = existing.get(code)
        if asset is None:
            asset = Asset.objects.create(
                code=code, kind=spec["kind"], name=spec["name"], parent=parent, path=path
            )
            created += 1
        else:
            old_path = asset.path
            asset.kind, asset.name, asset.parent, asset.path = (
                spec["kind"],
                spec["name"],
                parent,
                path,
            )
            asset.save()
            if old_path != path:  # moved: its subtree follows in one statement
                Asset.objects.filter(path__startswith=old_path).exclude(pk=asset.pk).update(
                    path=Concat(Value(path), Substr("path", Length(Value(old_path)) + 1))
                )
            updated += 1
        existing[code] = asset
        done.add(code)
        return asset

    for code in wanted:
        save(code)
    audit.record(actor=by, action="assets.upserted", after={"created": created, "updated": updated})
    return {"created": created, "updated": updated}


@transaction.atomic
def service_points_upsert(*, items: Sequence[Mapping[str, Any]], by=None) -> dict[str, int]:
    """Create or update service points by code: {"code", "customer" (external_ref, or id when
    an int), "asset" (code), "address", "postcode"}. All or nothing."""
    errors: list[dict] = []
    refs = {_text(i, "customer") for i in items}
    customers = dict(
        Customer.objects.filter(external_ref__in=refs).values_list("external_ref", "pk")
    )
    ids = {int(r) for r in refs if r.isdigit()}
    known_ids = set(Customer.objects.filter(pk__in=ids).values_list("pk", flat=True))
    assets = dict(
        Asset.objects.filter(code__in={_text(i, "asset") for i in items}).values_list("code", "pk")
    )
    rows: dict[str, ServicePoint] = {}
    for index, item in enumerate(items):
        code, ref, asset = _text(item, "code"), _text(item, "customer"), _text(item, "asset")
        customer_id = customers.get(ref) or (
            int(ref) if ref.isdigit() and int(ref) in known_ids else None
        )
        if not code:
            errors.append({"index": index, "field": "code", "message": "required"})
        elif customer_id is None:
            errors.append({"index": index, "field": "customer", "message": f"no customer {ref!r}"})
        elif asset not in assets:
            errors.append({"index": index, "field": "asset", "message": f"no asset {asset!r}"})
        else:
            rows[code] = ServicePoint(
                code=code,
                customer_id=customer_id,
                asset_id=assets[asset],
                address=_text(item, "address")[:300],
                postcode=_text(item, "postcode")[:20],
            )
    if errors:
        raise UpsertError(errors)
    before = set(ServicePoint.objects.filter(code__in=rows).values_list("code", flat=True))
    ServicePoint.objects.bulk_create(
        list(rows.values()),
        update_conflicts=True,
        unique_fields=["code"],
        update_fields=["customer", "asset", "address", "postcode", "updated_at"],
        batch_size=1000,
    )
    result = {"created": len(set(rows) - before), "updated": len(before)}
    audit.record(actor=by, action="service_points.upserted", after=result)
    return result
