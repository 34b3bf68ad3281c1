from __future__ import annotations

import re
import uuid

from ccm import context, generations

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    """Gives every request an id (the caller's `X-Request-ID` when it is sane), exposes it to the
    audit log and echoes it in the response. The request reads the shared cache's generations
    (of kept API keys and template versions) at most once."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = rid
        token = context.set_request_id(rid)
        try:
            with generations.read_once():
                response = self.get_response(request)
        finally:
            context.reset_request_id(token)
        response["X-Request-ID"] = rid
        return response


class RequestMetricsMiddleware:
    """Counts requests and their time for /metrics (per process: with several web processes,
    Prometheus sums the targets it scrapes)."""

    def __init__(self, get_response):
        from prometheus_client import Counter, Histogram

        from ccm import metrics

        self.get_response = get_response
        self.requests: Counter = metrics.HTTP_REQUESTS
        self.latency: Histogram = metrics.HTTP_LATENCY

    def __call__(self, request):
        import time

        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match and match.view_name else "unresolved"
        self.requests.labels(request.method, str(response.status_code)).inc()
        self.latency.labels(view).observe(time.perf_counter() - started)
        return response
