"""RFC 9457 problem details for every API error."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://ccm.invalid/problems/"  # stable identifiers, not fetched


class ApiProblem(exceptions.APIException):
    """Raise from a view or a service adapter with a status, a title and a detail."""

    def __init__(self, *, status_code: int, title: str, detail: str, code: str, errors=None):
        super().__init__(detail=detail, code=code)
        self.status_code = status_code
        self.title = title
        self.errors = errors


class Conflict(ApiProblem):
    def __init__(self, detail: str, code: str = "conflict"):
        super().__init__(status_code=409, title="Conflict", detail=detail, code=code)


class Unprocessable(ApiProblem):
    def __init__(self, detail: str, code: str = "unprocessable", errors=None):
        super().__init__(
            status_code=422, title="Unprocessable content", detail=detail, code=code, errors=errors
        )


_TITLES = {
    400: "Invalid request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Server error",
    503: "Service unavailable",
}


def field_errors(errors, prefix: str = "") -> list[dict]:
    """DRF's nested error dict → a flat list of {field, message} with dotted paths."""
    out: list[dict] = []
    if isinstance(errors, dict):
        for key, value in errors.items():
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                path = f"{prefix}[{key}]"
            elif key in ("non_field_errors", ""):
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            out.extend(field_errors(value, path))
    elif isinstance(errors, list):
        if all(not isinstance(e, dict | list) for e in errors):
            out.extend({"field": prefix, "message": str(e)} for e in errors)
        else:
            for i, value in enumerate(errors):
                out.extend(field_errors(value, f"{prefix}[{i}]" if prefix else f"[{i}]"))
    else:
        out.append({"field": prefix, "message": str(errors)})
    return out


def problem(
    *, status_code: int, detail: str, code: str, title: str | None = None, errors=None, request=None
) -> dict:
    body = {
        "type": PROBLEM_BASE + code.replace("_", "-"),
        "title": title or _TITLES.get(status_code, "Error"),
        "status": status_code,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.get_full_path()
    if errors:
        body["errors"] = errors
    return body


def problem_exception_handler(exc, context):
    request = context.get("request")
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
        )
    if isinstance(exc, RequestDataTooBig):
        exc = ApiProblem(
            status_code=413,
            title="Content too large",
            detail=f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes; "
            "send it in smaller calls.",
            code="too_large",
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled API error", exc_info=exc)
        response = Response(status=status.HTTP_500_INTERNAL_SERVER_ERROR)
        body = problem(
            status_code=500,
            detail="The server failed to handle this request; it has been logged.",
            code="server_error",
            request=request,
        )
    elif isinstance(exc, exceptions.ValidationError):
        errors = field_errors(exc.detail)
        body = problem(
            status_code=response.status_code,
            detail="; ".join(
                f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors
            ),
            code="validation_error",
            errors=errors,
            request=request,
        )
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(exc, "default_code", "error")
        if isinstance(exc, exceptions.APIException):
            codes = exc.get_codes()
            code = codes if isinstance(codes, str) else code
        body = problem(
            status_code=response.status_code,
            detail=str(detail),
            code=code,
            title=getattr(exc, "title", None),
            errors=getattr(exc, "errors", None),
            request=request,
        )
    response.data = body
    response.content_type = PROBLEM_CONTENT_TYPE
    if request is not None:
        # A browser asking for HTML still gets problem JSON, not the browsable page.
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = "application/json"
    return response


def _plain_problem(request, status_code: int, detail: str, code: str) -> JsonResponse:
    return JsonResponse(
        problem(status_code=status_code, detail=detail, code=code, request=request),
        status=status_code,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def api_not_found(request, exception=None):
    return _plain_problem(request, 404, "No API endpoint at this path.", "not_found")


def api_server_error(request):
    return _plain_problem(
        request,
        500,
        "The server failed to handle this request; it has been logged.",
        "server_error",
    )
