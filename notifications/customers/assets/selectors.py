"""Reads over the asset tree: who is served under an asset, and how many per region."""

from __future__ import annotations

from django.db.models import QuerySet

from notifications.customers.assets.models import PATH_SEP, Asset, ServicePoint


def service_points_under(*, asset: Asset) -> QuerySet[ServicePoint]:
    """Service points served by `asset` or anything beneath it (an index prefix scan on path)."""
    return ServicePoint.objects.filter(asset__path__startswith=asset.path)


def customer_ids_under(*, asset: Asset) -> list[int]:
    """The customers served under `asset`, each once, in id order."""
    return list(
        service_points_under(asset=asset)
        .order_by("customer_id")
        .values_list("customer_id", flat=True)
        .distinct()
    )


def customers_by_region(*, customer_ids: list[int]) -> list[tuple[str, int]]:
    """[(region code, customers)] for these customers, by their service points' root asset."""
    counts: dict[str, set[int]] = {}
    rows = (
        ServicePoint.objects.filter(customer_id__in=customer_ids)
        .values_list("customer_id", "asset__path")
        .iterator(chunk_size=5000)
    )
    for customer_id, path in rows:
        counts.setdefault(path.split(PATH_SEP, 1)[0], set()).add(customer_id)
    return sorted((region, len(ids)) for region, ids in counts.items())


def assets_by_code(*, codes: set[str]) -> dict[str, tuple[int, str, str]]:
    """{code: (id, kind, path)} in one query."""
    return {
        code: (pk, kind, path)
        for code, pk, kind, path in Asset.objects.filter(code__in=codes).values_list(
            "code", "pk", "kind", "path"
        )
    }
