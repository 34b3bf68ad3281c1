"""Assets and service points.

Every asset keeps its materialised path (`region-n/feeder-1/tx-7/`): the customers served under
an asset are one indexed prefix scan (`path LIKE 'region-n/feeder-1/%'`) joined to the service
points, whatever the depth, with no recursive query per lookup. Moving an asset rewrites its
subtree's paths in one UPDATE (rare: networks are re-parented far less often than read)."""

from __future__ import annotations

from django.db import models

PATH_SEP = "/"


class AssetKind(models.TextChoices):
    REGION = "region"
    SUBSTATION = "substation"
    FEEDER = "feeder"
    TRANSFORMER = "transformer"
    MAIN = "main", "water/gas main"
    METER = "meter"
    SENSOR = "sensor"
    DEVICE = "device"


class Asset(models.Model):
    code = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=AssetKind.choices)
    name = models.CharField(max_length=200, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    # The codes from the root down to this asset, each followed by "/".
    path = models.CharField(max_length=1000, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["path"]
        indexes = [
            # varchar_pattern_ops: a LIKE 'prefix%' scan uses the index whatever the collation.
            models.Index(
                fields=["path"], name="asset_path_prefix", opclasses=["varchar_pattern_ops"]
            )
        ]

    def __str__(self) -> str:
        return f"{self.name or self.code} ({self.kind})"

    @property
    def region_code(self) -> str:
        return self.path.split(PATH_SEP, 1)[0]

    def ancestor_codes(self) -> list[str]:
        """Codes from the root down to this asset (itself last)."""
        return [code for code in self.path.split(PATH_SEP) if code]


class ServicePoint(models.Model):
    """Where a customer is supplied: an address served by an asset (usually a meter)."""

    code = models.CharField(max_length=100, unique=True)
    customer = models.ForeignKey(
        "notifications.Customer", on_delete=models.CASCADE, related_name="service_points"
    )
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="service_points")
    address = models.CharField(max_length=300, blank=True)
    postcode = models.CharField(max_length=20, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code
