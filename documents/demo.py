"""The demo library (documents/library/), imported, signed off and published for `make run`."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model

from ccm import approvals
from documents import services
from documents.models import VersionState

LIBRARY = Path(__file__).resolve().parent / "library"


def seed_library(folder: Path = LIBRARY) -> None:
    """Import the library as the demo author and publish every new version through a real
    four-eyes sign-off by the demo reviewer. Running it again changes nothing."""
    User = get_user_model()
    author = User.objects.get(username="author")
    reviewer = User.objects.get(username="reviewer")
    for result in services.templates_import(folder=folder, by=author):
        if result.outcome == "invalid":
            raise RuntimeError(f"demo template {result.code} is invalid: {result.reason}")
        if result.outcome == "unchanged" or result.version is None:
            continue
        version = services.Template.objects.get(code=result.code).versions.get(
            number=result.version
        )
        if version.state != VersionState.DRAFT:
            continue
        approval = services.template_version_submit(version=version, by=author)
        approvals.approval_decide(
            approval=approval, by=reviewer, decision="approve", comment="Demo library sign-off"
        )
        version.refresh_from_db()
        services.template_version_publish(version=version, by=reviewer)
