from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from documents.composition import CompositionError
from documents.models import Template, VersionState
from documents.services import template_preview


class Command(BaseCommand):
    help = (
        "Render a proof PDF of a template version (watermarked PROOF unless published), "
        "composing its email, SMS and push renditions too so that they are checked as well."
    )

    def add_arguments(self, parser):
        # --version N names the template version here, not Django's version banner.
        parser.conflict_handler = parser._optionals.conflict_handler = "resolve"
        parser.add_argument("code")
        parser.add_argument("--version", type=int, dest="number", help="Default: the latest")
        parser.add_argument("--data", type=Path, help="JSON data; default: the default sample")
        parser.add_argument("--sample", default="default", help="Sample data set name")
        parser.add_argument("--language")
        parser.add_argument("--out", type=Path, required=True)

    def handle(self, *args, code, number, data, sample, language, out, **options):
        template = Template.objects.filter(code=code).first()
        if template is None:
            raise CommandError(f"No template {code!r}")
        versions = template.versions.order_by("-number")
        version = versions.filter(number=number).first() if number else versions.first()
        if version is None:
            raise CommandError(f"Template {code!r} has no version {number or ''}".strip())
        payload = None
        if data is not None:
            try:
                payload = json.loads(data.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise CommandError(f"Cannot read {data}: {exc}") from exc
        try:
            preview = template_preview(
                version=version, data=payload, language=language, sample=sample
            )
        except CompositionError as exc:
            lines = [f"Cannot render {code} v{version.number}:"]
            lines += [f"  {e.field or '(root)'}: {e.message}" for e in exc.errors] or [
                f"  {exc.reason}"
            ]
            raise CommandError("\n".join(lines)) from exc
        if preview.pdf is None:
            raise CommandError(f"Template {code!r} has no print rendition")
        out.write_bytes(preview.pdf.data)
        mark = "" if version.state == VersionState.PUBLISHED else ", marked PROOF"
        self.stdout.write(
            f"{out}: {code} v{version.number} ({version.state}{mark}), "
            f"{preview.pdf.page_count} pages"
        )
