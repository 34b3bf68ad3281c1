"""Print batches over the API: the mail house's system (scope "print") lists batches, fetches
the stream and manifest, reports batches mailed and letters returned; operations close and
hand over (their permission, so an API key alone cannot)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import exceptions, generics, permissions, serializers
from rest_framework.response import Response

from ccm.api.errors import ApiProblem, Conflict, Unprocessable
from ccm.api.views import CcmAPIView, CcmGenericAPIView
from notifications.channels import printing
from notifications.models import DeliveryState, PrintBatch, PrintItem

SCOPE = ("print",)
# Refusals about where the batch or letter is in its life; the rest are about its content.
CONFLICT_CODES = {"invalid_state", "already_returned", "empty_batch", "batch_busy"}


def print_problem(exc: printing.PrintError) -> ApiProblem:
    if exc.code in CONFLICT_CODES:
        return Conflict(str(exc), code=exc.code)
    return Unprocessable(str(exc), code=exc.code)


class CanSeePrintBatches(permissions.BasePermission):
    message = "Print batches need the notifications.view_printbatch permission."

    def has_permission(self, request, view) -> bool:
        return request.user.has_perm("notifications.view_printbatch")


class PrintBatchSerializer(serializers.ModelSerializer):
    reference = serializers.CharField(read_only=True)
    closed_by = serializers.CharField(source="closed_by.username", allow_null=True)
    handed_over_by = serializers.CharField(source="handed_over_by.username", allow_null=True)
    mailed_by = serializers.CharField(source="mailed_by.username", allow_null=True)
    stream_url = serializers.SerializerMethodField()
    manifest_url = serializers.SerializerMethodField()

    class Meta:
        model = PrintBatch
        fields = [
            "id",
            "reference",
            "state",
            "item_count",
            "page_count",
            "stream_sha256",
            "manifest_sha256",
            "stream_url",
            "manifest_url",
            "created_at",
            "closed_at",
            "closed_by",
            "handed_over_at",
            "handed_over_by",
            "mailed_at",
            "mailed_by",
        ]

    def _url(self, batch: PrintBatch, what: str) -> str | None:
        if not batch.stream:
            return None
        return self.context["request"].build_absolute_uri(
            f"/api/v1/print-batches/{batch.pk}/{what}"
        )

    def get_stream_url(self, batch) -> str | None:
        return self._url(batch, "stream")

    def get_manifest_url(self, batch) -> str | None:
        return self._url(batch, "manifest")


class PrintItemSerializer(serializers.ModelSerializer):
    reference = serializers.CharField(source="provider_id", read_only=True)
    batch = serializers.CharField(source="batch.reference")
    customer = serializers.CharField(source="customer.external_ref")
    delivery_state = serializers.ChoiceField(source="delivery.state", choices=DeliveryState.choices)
    returned_by = serializers.CharField(source="returned_by.username", allow_null=True)

    class Meta:
        model = PrintItem
        fields = [
            "id",
            "reference",
            "batch",
            "sequence",
            "customer",
            "recipient_name",
            "postal_address",
            "pages",
            "document",
            "document_sha256",
            "delivery",
            "delivery_state",
            "returned_at",
            "return_reason",
            "returned_by",
        ]


def _batches():
    return PrintBatch.objects.select_related("closed_by", "handed_over_by", "mailed_by")


@extend_schema_view(get=extend_schema(summary="Print batches, newest first"))
class PrintBatchListView(CcmGenericAPIView, generics.ListAPIView):
    """Print batches, newest first; filter with ?state=open|closed|handed_over|mailed."""

    permission_classes = [*CcmGenericAPIView.permission_classes, CanSeePrintBatches]
    required_scopes = SCOPE
    serializer_class = PrintBatchSerializer
    filterset_fields = ["state"]

    def get_queryset(self):
        return _batches()


@extend_schema_view(
    get=extend_schema(summary="A print batch: its state, who moved it on, its files' SHA-256")
)
class PrintBatchDetailView(CcmGenericAPIView, generics.RetrieveAPIView):
    """One print batch: its state, who moved it on and when, and its files' SHA-256."""

    permission_classes = [*CcmGenericAPIView.permission_classes, CanSeePrintBatches]
    required_scopes = SCOPE
    serializer_class = PrintBatchSerializer

    def get_queryset(self):
        return _batches()


@extend_schema_view(
    get=extend_schema(summary="The letters of a batch; ?sequence=N finds the one a cover names")
)
class PrintBatchItemsView(CcmGenericAPIView, generics.ListAPIView):
    """The letters of a batch; ?sequence=N finds the one a cover sheet names."""

    permission_classes = [*CcmGenericAPIView.permission_classes, CanSeePrintBatches]
    required_scopes = SCOPE
    serializer_class = PrintItemSerializer
    filterset_fields = ["sequence"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no batch
            return PrintItem.objects.none()
        batch = get_object_or_404(PrintBatch, pk=self.kwargs["pk"])
        return batch.items.select_related("batch", "customer", "delivery", "returned_by")


class _BatchStepView(CcmAPIView):
    permission_classes = [*CcmAPIView.permission_classes, CanSeePrintBatches]
    required_scopes = SCOPE
    step: Callable[..., PrintBatch]

    def post(self, request, pk: int):
        batch = get_object_or_404(PrintBatch, pk=pk)
        try:
            batch = type(self).step(batch=batch, by=request.user)
        except printing.PrintError as exc:
            raise print_problem(exc) from exc
        batch = _batches().get(pk=batch.pk)
        return Response(PrintBatchSerializer(batch, context={"request": request}).data)


def _step_schema(summary: str):
    return extend_schema_view(
        post=extend_schema(request=None, responses=PrintBatchSerializer, summary=summary)
    )


@_step_schema("Close the batch: produce its print stream and manifest (operations only)")
class PrintBatchCloseView(_BatchStepView):
    """open → closed. Refused (422) while an archived document does not match its SHA-256."""

    step = printing.print_batch_close


@_step_schema("Record the batch handed over to the mail house (operations only)")
class PrintBatchHandOverView(_BatchStepView):
    """closed → handed_over: the mail house has the stream and manifest."""

    step = printing.print_batch_hand_over


@_step_schema("Record the batch mailed: its letters are delivered")
class PrintBatchMailedView(_BatchStepView):
    """handed_over → mailed: every letter not returned is recorded delivered."""

    step = printing.print_batch_mark_mailed


class _BatchFileView(CcmAPIView):
    permission_classes = [*CcmAPIView.permission_classes, CanSeePrintBatches]
    required_scopes = SCOPE
    field = ""
    content_type = ""
    suffix = ""

    def get(self, request, pk: int):
        batch = get_object_or_404(PrintBatch, pk=pk)
        file = getattr(batch, self.field)
        if not file:
            raise exceptions.NotFound(
                f"{batch.reference} is {batch.state}; its {self.field} is produced when it is "
                "closed."
            )
        response = FileResponse(
            file.open("rb"),
            content_type=self.content_type,
            filename=f"{batch.reference}{self.suffix}",
        )
        response["X-Content-SHA256"] = getattr(batch, f"{self.field}_sha256")
        return response


ID_PARAM = OpenApiParameter("id", int, OpenApiParameter.PATH)
SHA256_HEADER = OpenApiParameter(
    "X-Content-SHA256",
    str,
    OpenApiParameter.HEADER,
    response=[200],
    description="The SHA-256 of the file's bytes, in hex, as fixed when the batch closed",
)


@extend_schema_view(
    get=extend_schema(
        responses={(200, "application/pdf"): OpenApiTypes.BINARY},
        parameters=[ID_PARAM, SHA256_HEADER],
        summary="The print stream: a cover sheet and the archived document per letter",
    )
)
class PrintBatchStreamView(_BatchFileView):
    """The PDF print stream, byte for byte as closed (X-Content-SHA256 carries its hash)."""

    field, content_type, suffix = "stream", "application/pdf", ".pdf"


@extend_schema_view(
    get=extend_schema(
        responses={(200, "text/csv"): OpenApiTypes.STR},
        parameters=[ID_PARAM, SHA256_HEADER],
        summary="The manifest: one CSV row per letter, with pages and document SHA-256",
    )
)
class PrintBatchManifestView(_BatchFileView):
    """The CSV manifest, byte for byte as closed (X-Content-SHA256 carries its hash)."""

    field, content_type, suffix = "manifest", "text/csv; charset=utf-8", "-manifest.csv"


class ReturnSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=300, help_text="Why the letter came back, e.g. 'addressee gone away'"
    )


class PrintItemReturnView(CcmAPIView):
    """A letter came back: its delivery bounces and the postal address is marked invalid."""

    permission_classes = [*CcmAPIView.permission_classes, CanSeePrintBatches]
    required_scopes = SCOPE

    @extend_schema(
        request=ReturnSerializer,
        responses=PrintItemSerializer,
        summary="Record a letter returned by the post (the delivery bounces)",
    )
    def post(self, request, pk: int):
        item = get_object_or_404(PrintItem, pk=pk)
        body = ReturnSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            item = printing.print_item_return(
                item=item, reason=body.validated_data["reason"], by=request.user
            )
        except printing.PrintError as exc:
            raise print_problem(exc) from exc
        item = PrintItem.objects.select_related("batch", "customer", "delivery", "returned_by").get(
            pk=item.pk
        )
        return Response(PrintItemSerializer(item).data)
