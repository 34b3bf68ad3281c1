from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig


class CcmAdminSite(admin.AdminSite):
    site_header = "CCM back-office"
    site_title = "CCM"
    index_title = "Customer communications"
    login_template = "registration/login.html"


class CcmAdminConfig(AdminConfig):
    default_site = "ccm.admin_site.CcmAdminSite"
