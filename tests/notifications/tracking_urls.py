"""Anymail's webhook endpoints alone, for the tracking tests (the project's urls may not have
them yet)."""

from django.urls import include, path

urlpatterns = [path("anymail/", include("anymail.urls"))]
