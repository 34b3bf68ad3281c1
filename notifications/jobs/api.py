"""`POST /api/v1/communications/batch` and `GET /api/v1/jobs/{id}` (+ its items)."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_view, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from ccm.api.errors import field_errors, problem
from ccm.api.idempotency import MAX_KEY_LENGTH, client_of
from ccm.api.pagination import CursorPagination
from ccm.api.views import CcmAPIView, CcmGenericAPIView
from notifications.jobs import selectors, services
from notifications.models import Communication, SendJob, SendJobItem
from notifications.pipeline.api import CommunicationRequestSerializer

MAX_BATCH_ITEMS = 1000


class BatchItemSerializer(CommunicationRequestSerializer):
    idempotency_key = serializers.CharField(
        max_length=MAX_KEY_LENGTH,
        required=False,
        help_text="This item's own key: the same key from the same client returns the "
        "communication made the first time",
    )


class BatchRequestSerializer(serializers.Serializer):
    # Each item is checked on its own (a bad one is refused in the answer, the good ones are
    # accepted), so the call's schema takes any object per item; the shape an item must have is
    # that of POST /api/v1/communications plus an optional idempotency_key.
    items = serializers.ListField(
        child=serializers.DictField(),
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        help_text=f"1 to {MAX_BATCH_ITEMS} communications, each shaped like the body of POST "
        "/api/v1/communications (template, customer, data, …) with an optional idempotency_key",
    )


def _refused(errors: list[dict]) -> dict:
    detail = "; ".join(
        f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors
    )
    return problem(status_code=422, detail=detail, code="validation_error", errors=errors)


def job_url(request, job: SendJob) -> str:
    return request.build_absolute_uri(f"/api/v1/jobs/{job.pk}")


class CommunicationBatchView(CcmAPIView):
    required_scopes = ("communications:write",)

    @extend_schema(
        request=BatchRequestSerializer,
        responses={
            202: inline_serializer(
                "BatchAccepted",
                {
                    "job": serializers.DictField(),
                    "accepted": serializers.IntegerField(),
                    "refused": serializers.IntegerField(),
                    "items": serializers.ListField(child=serializers.DictField()),
                },
            )
        },
        summary="Request up to 1,000 communications in one call (one send job)",
        description="Each item has the shape of POST /api/v1/communications plus an optional "
        "idempotency_key. Good items are accepted even when others are refused; every item's "
        "result is in `items`, in order: its communication, or a problem with the fields to fix.",
    )
    def post(self, request):
        raw = request.data.get("items") if isinstance(request.data, dict) else None
        if not isinstance(raw, list) or not raw:
            raise serializers.ValidationError(
                {"items": [f"Give a list of 1 to {MAX_BATCH_ITEMS} communications."]}
            )
        if len(raw) > MAX_BATCH_ITEMS:
            # 400 on `items`, as the schema's maxItems says (not 413: the body is not too large
            # for the server, the list is too long for one job).
            raise serializers.ValidationError(
                {
                    "items": [
                        f"{len(raw)} items: a batch holds at most {MAX_BATCH_ITEMS}. "
                        "Split it into several calls."
                    ]
                }
            )
        # The call's schema takes any object per item, but only objects: anything else refuses
        # the whole call (400), as the schema says.
        not_objects = {
            str(i): ["Give a JSON object."] for i, b in enumerate(raw) if not isinstance(b, dict)
        }
        if not_objects:
            raise serializers.ValidationError({"items": not_objects})
        items: list[services.BatchItem] = []
        refused: dict[int, list[dict]] = {}
        # One serializer for every item: building one per item (DRF deep-copies its fields
        # each time) cost more than the whole intake of a thousand.
        checker = BatchItemSerializer()
        for index, body in enumerate(raw):
            try:
                v = checker.run_validation(body)
            except serializers.ValidationError as exc:
                refused[index] = field_errors(exc.detail)
                continue
            items.append(
                services.BatchItem(
                    index=index,
                    customer_ref=v["customer"],
                    source_system=v["source_system"],
                    template_code=v["template"],
                    data=v["data"],
                    idempotency_key=v.get("idempotency_key") or None,
                    category=v.get("category"),
                    urgency=v["urgency"],
                    channel=v["channel"],
                    correlation_id=v["correlation_id"],
                )
            )
        job, submitted = services.send_job_batch_submit(
            items=items, refused=refused, client=client_of(request), by=request.user
        )
        base = request.build_absolute_uri("/api/v1/communications/")
        # Integrators know a communication by its public id, never the database's counter.
        public = dict(
            Communication.objects.filter(pk__any=list(submitted.accepted.values())).values_list(
                "pk", "public_id"
            )
        )
        results = []
        for index in range(len(raw)):
            if index in submitted.accepted:
                public_id = str(public[submitted.accepted[index]])
                results.append(
                    {
                        "index": index,
                        "status": "accepted",
                        "id": public_id,
                        "url": f"{base}{public_id}",
                    }
                )
            else:
                results.append(
                    {
                        "index": index,
                        "status": "refused",
                        "problem": _refused(submitted.refused.get(index, [])),
                    }
                )
        return Response(
            {
                "job": {"id": job.pk, "state": job.state, "url": job_url(request, job)},
                "accepted": len(submitted.accepted),
                "refused": len(submitted.refused),
                "items": results,
            },
            status=status.HTTP_202_ACCEPTED,
        )


class JobSerializer(serializers.ModelSerializer):
    template = serializers.CharField(source="template.code", allow_null=True, default=None)
    progress = serializers.SerializerMethodField()
    items_url = serializers.SerializerMethodField()

    class Meta:
        model = SendJob
        fields = [
            "id",
            "source",
            "state",
            "template",
            "file_name",
            "created_at",
            "send_at",
            "started_at",
            "finished_at",
            "cancel_reason",
            "progress",
            "items_url",
        ]

    def get_progress(self, job) -> dict:
        return selectors.send_job_progress(job)

    def get_items_url(self, job) -> str:
        return self.context["request"].build_absolute_uri(f"/api/v1/jobs/{job.pk}/items")


def _own_job(request, pk: int) -> SendJob:
    job = selectors.send_job_for_client(pk=pk, client=client_of(request))
    if job is None:
        raise Http404
    return job


class JobDetailView(CcmAPIView):
    required_scopes = ("communications:read",)

    @extend_schema(
        responses=JobSerializer,
        summary="A send job's progress: counts per communication state, rate, ETA",
    )
    def get(self, request, pk: int):
        job = _own_job(request, pk)
        if services.send_job_settle(job_id=job.pk):
            job.refresh_from_db()
        return Response(JobSerializer(job, context={"request": request}).data)


class JobItemSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    communication = serializers.UUIDField(
        source="communication.public_id", allow_null=True, default=None
    )
    communication_state = serializers.CharField(
        source="communication.state", allow_null=True, default=None
    )

    class Meta:
        model = SendJobItem
        fields = [
            "index",
            "status",
            "customer_ref",
            "template_code",
            "idempotency_key",
            "communication",
            "communication_state",
            "errors",
        ]

    def get_status(self, item) -> str:
        if item.errors:
            return "refused"
        return "accepted" if item.communication_id else "waiting"


class JobItemCursor(CursorPagination):
    ordering = "index"
    page_size = 100


@extend_schema_view(
    get=extend_schema(
        summary="A send job's items, in order",
        description="Each item's status (accepted, refused, waiting), its communication and "
        "that communication's state, or the errors it was refused with. Paged by cursor.",
    )
)
class JobItemListView(CcmGenericAPIView, generics.ListAPIView):
    required_scopes = ("communications:read",)
    serializer_class = JobItemSerializer
    pagination_class = JobItemCursor

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no job
            return SendJobItem.objects.none()
        return selectors.send_job_items(_own_job(self.request, self.kwargs["pk"]))
