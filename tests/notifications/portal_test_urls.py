"""The project's urls plus the portal at /p/ (until the root urls mount it)."""

from django.urls import include, path

from ccm.urls import urlpatterns as project_urlpatterns

urlpatterns = [*project_urlpatterns, path("p/", include("notifications.channels.portal_urls"))]
