"""The customer document portal, mounted by the root urls at /p/."""

from __future__ import annotations

from django.urls import path

from notifications.channels import portal

urlpatterns = [
    path("<str:token>/", portal.portal_document, name="portal-document"),
    path("<str:token>/document.pdf", portal.portal_pdf, name="portal-pdf"),
    path("<str:token>/page-1.png", portal.portal_page_image, name="portal-page-image"),
    path("<str:token>/brand.css", portal.portal_brand_css, name="portal-brand-css"),
    path("<str:token>/action", portal.portal_action, name="portal-action"),
    path("<str:token>/renew", portal.portal_renew, name="portal-renew"),
]
