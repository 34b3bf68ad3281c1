"""OpenAPI: the contract an integrator codes against, made in one place for every operation.

- the Api-Key scheme, and which operations refuse it (staff sessions only);
- the `Idempotency-Key` header on every POST, with its limits;
- every operation's error answers, all one `Problem` schema (`application/problem+json`);
- descriptions written for integrators: never a view's docstring, always who may call it;
- state enums say which of their states are final.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.apps import apps
from django.db import models
from django_fsm import FSMField
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, extend_schema_field
from rest_framework import serializers

from ccm.api.auth import SessionOnly
from ccm.api.errors import PROBLEM_CONTENT_TYPE
from ccm.api.idempotency import HEADER, KEY_PATTERN, MAX_KEY_LENGTH, IdempotentMixin


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


class ProblemErrorSerializer(serializers.Serializer):
    field = serializers.CharField(
        help_text="What is at fault: a body field as a dotted path (`data.balance`, "
        "`emails[0]`), a query parameter (`status`, `page_size`) or a header "
        "(`Idempotency-Key`); empty for the request as a whole."
    )
    message = serializers.CharField()


class ProblemSerializer(serializers.Serializer):
    """An RFC 9457 problem: what every error answer of the API carries."""

    type = serializers.CharField(
        help_text="A stable URI naming the kind of problem, e.g. "
        "`https://ccm.invalid/problems/validation-error`; branch on it, not on `detail`."
    )
    title = serializers.CharField(help_text="A short summary of the kind of problem")
    status = serializers.IntegerField(help_text="The HTTP status code, repeated")
    detail = serializers.CharField(help_text="What went wrong with this request, in words")
    instance = serializers.CharField(required=False, help_text="The path that was requested")
    errors = ProblemErrorSerializer(  # type: ignore[assignment]
        many=True, required=False, help_text="One entry per field, parameter or header at fault"
    )


# What each error status means for any operation; an operation may say more in its own words.
ERROR_DESCRIPTIONS = {
    400: "Invalid request: a body field, query parameter or header is malformed or out of "
    "range (each named in `errors[].field`).",
    401: "No credentials, or an unknown or revoked API key.",
    403: "The API key lacks the scope this operation needs, or the staff session's role lacks "
    "the permission.",
    404: "Nothing at this path: no such object, or not one this caller may see.",
    409: "Conflicts with the object's current state (e.g. a transition it does not allow), or "
    "a request with the same Idempotency-Key is still being processed: retry later.",
    413: "The body is too large, or holds more items than the operation takes in one call.",
    415: "The body is not `application/json`.",
    422: "Well-formed but not acceptable: e.g. data the template's schema refuses, an unknown "
    "customer or template, or an Idempotency-Key already used with a different body.",
    429: "Too many requests: wait the seconds the `Retry-After` header gives, then retry.",
}
SUCCESS_DESCRIPTIONS = {
    "200": "OK",
    "201": "Created",
    "202": "Accepted: the work goes on in the background",
    "204": "Done; no body",
}


@extend_schema_field({"type": "object", "additionalProperties": True})
class JSONObjectField(serializers.JSONField):
    """A JSON object (not a list or a scalar), typed as one in the schema."""

    default_error_messages = {"not_object": "Give a JSON object."}

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_object")
        return value


def _refuses_api_keys(view) -> bool:
    return any(isinstance(p, SessionOnly) for p in view.get_permissions())


def _required_scopes(view, method: str) -> tuple[str, ...]:
    required = getattr(view, "required_scopes", ())
    if isinstance(required, dict):
        required = required.get(method, required.get("*", ())) or ()
    return tuple(required)


class CcmAutoSchema(AutoSchema):
    def get_description(self) -> str:  # type: ignore[override]
        # Only what extend_schema says: a view's docstring is written for its maintainers.
        return ""

    def get_auth(self):
        auths = super().get_auth()
        if _refuses_api_keys(self.view):
            return [a for a in auths if ApiKeyScheme.name not in a]
        return auths

    def get_override_parameters(self):
        params = list(super().get_override_parameters())
        if self.method == "POST" and isinstance(self.view, IdempotentMixin):
            params.append(
                OpenApiParameter(
                    HEADER,
                    type={
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_KEY_LENGTH,
                        "pattern": KEY_PATTERN,
                    },
                    location=OpenApiParameter.HEADER,
                    required=False,
                    description=(
                        f"Makes the POST safe to retry. 1 to {MAX_KEY_LENGTH} printable ASCII "
                        "characters (space to `~`, no space at either end), e.g. a UUID; any "
                        "other key is refused with 400. The same key with the same JSON body "
                        "(whitespace and key order aside) replays the stored response, marked "
                        "`Idempotent-Replayed: true`; with another body → 422; while the first "
                        "request is still running → 409. Keys belong to the caller (API key or "
                        "user) and expire after 24 hours."
                    ),
                )
            )
            params.append(
                OpenApiParameter(
                    "Idempotent-Replayed",
                    type=str,
                    enum=["true"],
                    location=OpenApiParameter.HEADER,
                    response=True,
                    description="Present when this is the stored response of an earlier "
                    "request with the same Idempotency-Key.",
                )
            )
        return params

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        operation["description"] = "\n\n".join(
            part for part in (operation.get("description", ""), self._who_may_call()) if part
        )
        problem = self.resolve_serializer(ProblemSerializer, "response").ref
        responses = operation["responses"]
        for status_code, response in responses.items():
            if not response.get("description"):
                response["description"] = SUCCESS_DESCRIPTIONS.get(status_code, "")
        for status_code in self._error_statuses(operation):
            declared = responses.get(str(status_code), {})
            responses[str(status_code)] = {
                "description": declared.get("description") or ERROR_DESCRIPTIONS[status_code],
                "content": {PROBLEM_CONTENT_TYPE: {"schema": problem}},
            }
        responses["429"]["headers"] = {
            "Retry-After": {
                "schema": {"type": "integer"},
                "description": "Seconds to wait before retrying",
            }
        }
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _error_statuses(self, operation) -> list[int]:
        statuses = {401, 403, 429}
        parameters = operation.get("parameters", [])
        if any(p["in"] == "path" for p in parameters):
            statuses.add(404)
        if "requestBody" in operation or any(p["in"] in ("query", "header") for p in parameters):
            statuses.add(400)
        if "requestBody" in operation:
            statuses.add(415)
        if self.method == "POST" and isinstance(self.view, IdempotentMixin):
            statuses |= {400, 409, 422}
        # An error the operation declares itself (e.g. 422 for data a template refuses).
        statuses |= {
            int(code) for code in operation["responses"] if int(code) in ERROR_DESCRIPTIONS
        }
        return sorted(statuses)

    def _who_may_call(self) -> str:
        if _refuses_api_keys(self.view):
            return "**Staff session only**: API keys are refused."
        scopes = _required_scopes(self.view, self.method)
        if not scopes:
            return "Any API key, or a staff session."
        named = ", ".join(f"`{scope}`" for scope in scopes)
        return f"API key scope: {named}; or a staff session whose role allows it."


# --- state enums: which states are final ------------------------------------------------------

# Choice sets that are not django-fsm fields, with the states nothing moves on from.
_DECLARED_FINAL: dict[frozenset[str], tuple[str, ...]] = {}


def final_states_declare(choices: type[models.TextChoices], *, final: Iterable[str]) -> None:
    """Say which states of a plain (non-FSM) state field never change again."""
    _DECLARED_FINAL[frozenset(choices.values)] = tuple(final)


def _final_states() -> dict[frozenset[str], tuple[str, ...]]:
    """Every state machine's final states: those no transition leaves."""
    found = dict(_DECLARED_FINAL)
    for model in apps.get_models():
        for model_field in model._meta.fields:
            if not isinstance(model_field, FSMField):
                continue
            values = [value for value, _ in model_field.choices]
            sources = {t.source for t in model_field.get_all_transitions(model)}
            if sources & {"*", "+"}:
                continue  # a wildcard transition leaves every state: none is final
            found[frozenset(values)] = tuple(v for v in values if v not in sources)
    return found


def postprocess_final_states(result, generator, request, public):
    """Append 'Final states: …' to the description of every state enum of a state machine."""
    finals = _final_states()
    for component in result.get("components", {}).get("schemas", {}).values():
        values = frozenset(v for v in component.get("enum", []) if v not in ("", None))
        if values not in finals:
            continue
        final = finals[values]
        note = (
            "Final states (it never changes again): " + ", ".join(f"`{v}`" for v in final) + "."
            if final
            else "No state is final: each may still change."
        )
        component["description"] = "\n\n".join(p for p in (component.get("description"), note) if p)
    return result
