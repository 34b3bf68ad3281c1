"""The customer screens (cases/web/customers.py), mounted at /customers/."""

from __future__ import annotations

from django.urls import path

from cases.web import customers as views

urlpatterns = [
    path("", views.customer_list, name="customer-list"),
    path("<int:pk>/", views.customer_detail, name="customer-detail"),
    path("<int:pk>/address/", views.address_correct, name="customer-address"),
]
