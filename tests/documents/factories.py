from __future__ import annotations

import base64
import re

import factory

from documents.bundle import Bundle
from documents.models import Template

LETTER_HTML = """<h1>Dear {{ customer.name }}</h1>
<p>Your balance is {{ balance | money("GBP") }} on {{ as_of | date }}.</p>
{% include "footer.html" %}"""


def letter_bundle(code: str = "letter", *, heading: str = "Dear", **meta) -> Bundle:
    """A small but complete template: print, email and SMS, one partial, one static insert."""
    return Bundle(
        meta={
            "code": code,
            "name": "Balance letter",
            "category": "transactional",
            "languages": ["en", "de"],
            "channels": ["print", "email", "sms"],
            "page": {"size": "A4", "margin": "20mm"},
            "delivery": "attach",
            "static_sections": ["terms"],
            **meta,
        },
        schema={
            "type": "object",
            "required": ["customer", "balance", "as_of"],
            "properties": {
                "customer": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "minLength": 1}},
                },
                "balance": {"type": "number"},
                "as_of": {"type": "string", "format": "date"},
            },
        },
        samples={
            "default": {
                "customer": {"name": "Ada Lovelace"},
                "balance": 1234.5,
                "as_of": "2026-03-01",
            }
        },
        files={
            "print.html": LETTER_HTML.replace("Dear", heading),
            "print.css": "h1 { font-family: 'DejaVu Sans'; color: #0b5cad; }",
            "partials/footer.html": "<p class='footer'>Northwind Utilities</p>",
            "static/terms.html": "<h2>Terms and conditions</h2><p>These terms apply.</p>",
            "email.subject.txt": "Your balance, {{ customer.name }}",
            "email.html": "<p>Hello {{ customer.name }}, you owe {{ balance | money('GBP') }}.</p>",
            "email.txt": "Hello {{ customer.name }}, you owe {{ balance | money('GBP') }}.",
            "sms.txt": "Northwind: balance {{ balance | money('GBP') }}.",
            "lang/de/print.html": (
                "<h1>Hallo {{ customer.name }}</h1><p>Saldo {{ balance | money('EUR') }}.</p>"
            ),
        },
        assets={},
    )


def drawn_chart(markup: str) -> str:
    """The chart's own SVG in a chart's markup: the inline SVG itself (drawing 1), or the SVG
    inside drawing 2's data: URL image."""
    found = re.search(r'href="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', markup)
    return base64.b64decode(found.group(1)).decode() if found else markup


class TemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Template
        django_get_or_create = ("code",)

    code = "letter"
    name = "Balance letter"
    category = "transactional"
    languages = factory.LazyFunction(lambda: ["en", "de"])
