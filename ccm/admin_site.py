from __future__ import annotations

from contextvars import ContextVar
from functools import wraps

from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

# The request an admin view is answering, for the read-only field links below (Django's
# AdminReadonlyField is not given the request).
_admin_request: ContextVar[HttpRequest | None] = ContextVar("ccm_admin_request", default=None)
_django_readonly_link = helpers.AdminReadonlyField.get_admin_url


def current_admin_request() -> HttpRequest | None:
    """The request the admin view being rendered answers (None outside the admin)."""
    return _admin_request.get()


def _readonly_link_if_allowed(self, remote_field, remote_obj):
    """Django links a read-only foreign key to the related object's change page whoever looks;
    a role that may not open that page would get a link that answers 403. Link it only for
    those who may view it, else show its name."""
    request = _admin_request.get()
    related_admin = self.model_admin.admin_site._registry.get(remote_field.model)
    if (
        request is None
        or related_admin is None
        or not related_admin.has_view_or_change_permission(request, remote_obj)
    ):
        return str(remote_obj)
    return _django_readonly_link(self, remote_field, remote_obj)


class CcmAdminSite(admin.AdminSite):
    site_header = "CCM back-office"
    site_title = "CCM"
    index_title = "Customer communications"
    login_template = "registration/login.html"
    # No sidebar of every model on every page: building and drawing it (a permission check and
    # two URLs for each of ~60 models) was a seventh of a changelist's time, and the admin's
    # index and the site's navigation already list where to go.
    enable_nav_sidebar = False

    def each_context(self, request):
        """Django's, with `available_apps` built only if a page shows it (the sidebar did; the
        index builds its own list): Django's builds it for every page."""
        script_name = request.META["SCRIPT_NAME"]
        site_url = script_name if self.site_url == "/" and script_name else self.site_url
        return {
            "site_title": self.site_title,
            "site_header": self.site_header,
            "site_url": site_url,
            "has_permission": self.has_permission(request),
            "available_apps": SimpleLazyObject(lambda: self.get_app_list(request)),
            "is_popup": False,
            "is_nav_sidebar_enabled": self.enable_nav_sidebar,
            "log_entries": self.get_log_entries(request),
        }

    def admin_view(self, view, cacheable=False):
        inner = super().admin_view(view, cacheable)

        @wraps(inner)
        def with_request(request, *args, **kwargs):
            token = _admin_request.set(request)
            try:
                response = inner(request, *args, **kwargs)
                # Rendered here, while the request is known (a TemplateResponse renders late).
                if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                    response.render()
                return response
            finally:
                _admin_request.reset(token)

        return with_request


class CcmAdminConfig(AdminConfig):
    default_site = "ccm.admin_site.CcmAdminSite"

    def ready(self):
        super().ready()
        helpers.AdminReadonlyField.get_admin_url = _readonly_link_if_allowed  # type: ignore[method-assign]


def confirm_first(modeladmin, request, queryset, *, consequence: str):
    """An admin action that cannot be undone asks first, on a page of its own listing what it
    will act on; the action runs only when that page's form comes back (`confirmed=yes`), so a
    click on "Go" alone never does it, with or without JavaScript. Returns the page to show,
    or None when confirmed."""
    from django.template.response import TemplateResponse

    if request.POST.get("confirmed") == "yes":
        return None
    action = request.POST.get("action", "")
    description = modeladmin.get_actions(request).get(action, (None, None, action))[2]
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"{description}?",
        "opts": opts,
        "objects": list(queryset[:200]),
        "count": queryset.count(),
        "consequence": consequence,
        "action": action,
        "action_label": description,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
    }
    return TemplateResponse(request, "admin/confirm_action.html", context)
