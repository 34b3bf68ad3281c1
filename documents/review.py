"""What a reviewer sees of a template version before signing it off: every channel rendered
from the default sample data, the print proof beside the published version, and the source diff.

The back-office review page and the kernel's sign-off screen (`/review/<id>/`, through the proof
registered with `ccm.approvals`) show the same fragment, `documents/version_proof.html`.
"""

from __future__ import annotations

from typing import Any

from ccm.approvals import Proof
from documents import selectors, services
from documents.composition import CompositionError
from documents.models import TemplateVersion

PROOF_TEMPLATE = "documents/version_proof.html"


def version_proof_context(version: TemplateVersion) -> dict[str, Any]:
    preview, preview_error = None, None
    try:
        preview = services.template_preview(version=version, channels=["email", "sms", "push"])
    except CompositionError as exc:
        # A version whose sample no longer renders is still reviewable: the reason is the proof.
        preview_error = exc
    live = version.template.published_version
    return {
        "version": version,
        # A template without a print rendition has no PDF proof to show (the link would 404).
        "prints": "print" in version.meta.get("channels", []),
        "live": live if live and live.pk != version.pk else None,
        "preview": preview,
        "preview_error": preview_error,
        "diff": selectors.version_diff(version),
    }


def version_proof(version: TemplateVersion) -> Proof:
    return Proof(PROOF_TEMPLATE, version_proof_context(version))
