from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ccm import notices
from ccm.api import errors
from ccm.health import run_checks
from ccm.models import Notice
from ccm.selectors import home_sections


def staff_only(*perms: str):
    """Signed-out people go to the login form; signed-in people without the role get a 403."""

    def decorate(view):
        return login_required(permission_required(perms, raise_exception=True)(view))

    return decorate


def confirmed(request) -> bool:
    """Whether an irreversible action's POST comes back from its confirmation page."""
    return request.POST.get("confirm") == "yes"


def confirm_page(
    request,
    *,
    question: str,
    consequences: list[str],
    yes: str,
    back_url: str,
    carry: dict[str, str] | None = None,
):
    """The page an irreversible action shows before doing it: what will happen, and a form that
    posts the same fields (`carry`) back to the same URL with `confirm=yes`. Nothing is done
    until that form comes back, with or without JavaScript."""
    context = {
        "question": question,
        "consequences": consequences,
        "yes": yes,
        "back_url": back_url,
        "action": request.path,
        "carry": sorted((carry or {}).items()),
    }
    return render(request, "confirm.html", context)


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


@login_required
@require_http_methods(["GET", "POST"])
def notice_list(request):
    """The signed-in person's notices, newest first, and their daily digest setting."""
    if request.method == "POST":
        if request.POST.get("action") == "read_all":
            notices.notices_mark_read(user=request.user)
            messages.success(request, "Every notice is marked read.")
        elif request.POST.get("action") == "digest":
            daily = request.POST.get("daily_digest") == "on"
            notices.digest_set(user=request.user, daily=daily)
            messages.success(
                request,
                "You will get a daily digest mail."
                if daily
                else "You will get no daily digest mail.",
            )
        return redirect("notices")
    page = Paginator(
        Notice.objects.filter(user=request.user).only(
            "kind", "title", "body", "url", "created_at", "read_at"
        ),
        notices.PAGE_SIZE,
    ).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "unread": notices.unread_count(request.user),
        "digest": notices.digest_wanted(request.user),
        "has_email": bool(request.user.email),
    }
    return render(request, "notices.html", context)


@login_required
@require_POST
def notice_open(request, pk: int):
    """Mark the notice read and go where it points."""
    notice = get_object_or_404(Notice, pk=pk, user=request.user)
    notices.notices_mark_read(user=request.user, ids=[notice.pk])
    return redirect(notice.url or "notices")
