"""The shape of one communication request over the API, the intake's input.

`POST /api/v1/communications` (notifications/api.py) takes one, and every item of
`POST /api/v1/communications/batch` (notifications/jobs/api.py) is one, so both import it here.
"""

from __future__ import annotations

from rest_framework import serializers

from ccm.api.schema import JSONObjectField
from documents.models import Category
from notifications.models import Channel, Urgency


class CommunicationRequestSerializer(serializers.Serializer):
    template = serializers.SlugField(help_text="The template code")
    customer = serializers.CharField(help_text="The customer's external reference")
    source_system = serializers.CharField(default="default")
    data = JSONObjectField(  # type: ignore[assignment]
        help_text="The template's data: a JSON object, checked against the template's JSON "
        "Schema (GET /api/v1/templates/{code} shows it)"
    )
    urgency = serializers.ChoiceField(choices=Urgency.choices, default=Urgency.NORMAL)
    category = serializers.ChoiceField(choices=Category.choices, required=False)
    channel = serializers.ChoiceField(choices=Channel.choices, required=False, default="")
    correlation_id = serializers.CharField(max_length=100, required=False, default="")
