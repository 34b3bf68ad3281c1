"""OpenAPI: the Api-Key scheme, the Idempotency-Key header and problem-details errors."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter

from ccm.api.idempotency import HEADER, IdempotentMixin


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "ccm.api.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Authorization: Api-Key <key>`; issue keys with `create_api_key`.",
        }


class CcmAutoSchema(AutoSchema):
    def get_override_parameters(self):
        params = list(super().get_override_parameters())
        if self.method == "POST" and isinstance(self.view, IdempotentMixin):
            params.append(
                OpenApiParameter(
                    HEADER,
                    type=str,
                    location=OpenApiParameter.HEADER,
                    required=False,
                    description=(
                        "Makes the POST safe to retry: the same key with the same body replays "
                        "the stored response; with another body → 422; while the first request "
                        "runs → 409. Scoped to the caller, expires after 24 hours."
                    ),
                )
            )
        return params
