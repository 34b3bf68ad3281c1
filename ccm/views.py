from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from ccm.api import errors
from ccm.health import run_checks
from ccm.selectors import home_sections


def staff_only(*perms: str):
    """Signed-out people go to the login form; signed-in people without the role get a 403."""

    def decorate(view):
        return login_required(permission_required(perms, raise_exception=True)(view))

    return decorate


@require_GET
@never_cache
def healthz(request):
    healthy, checks = run_checks()
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status=200 if healthy else 503,
    )


@require_GET
def favicon(request):
    """Documents without an icon link of their own (a PDF, a sandboxed email frame) make the
    browser ask for /favicon.ico: send it to the site's icon instead of a 404."""
    return redirect(static("ccm/favicon.svg"), permanent=True)


@login_required
def home(request):
    return render(request, "home.html", {"sections": home_sections(request.user)})


def not_found(request, exception=None):
    if request.path.startswith("/api/"):
        return errors.api_not_found(request, exception)
    return render(request, "404.html", status=404)


def server_error(request):
    if request.path.startswith("/api/"):
        return errors.api_server_error(request)
    return render(request, "500.html", status=500)
