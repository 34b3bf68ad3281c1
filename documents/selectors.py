"""Reads for the documents screens and endpoints."""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from collections.abc import Iterable

from django.contrib.contenttypes.models import ContentType
from django.db.models import OuterRef, QuerySet, Subquery

from ccm import generations
from ccm.models import Approval, ApprovalState
from ccm.search import as_int, as_uuid, matching_pks
from documents.models import Document, Template, TemplateVersion, VersionState


def template_list() -> QuerySet[Template]:
    published = TemplateVersion.objects.filter(
        template=OuterRef("pk"), state=VersionState.PUBLISHED
    ).values("number")[:1]
    return Template.objects.annotate(published_number=Subquery(published)).order_by("code")


def document_search(term: str) -> QuerySet:
    """The ids of the documents `term` names: the start of their SHA-256 (b-tree prefix), their
    id or their public id."""
    parts = [Document.objects.filter(sha256__startswith=term.lower()).values("pk")]
    if (number := as_int(term)) is not None:
        parts.append(Document.objects.filter(pk=number).values("pk"))
    if (public_id := as_uuid(term)) is not None:
        parts.append(Document.objects.filter(public_id=public_id).values("pk"))
    return matching_pks(parts)


def version_for_preview(*, template: Template, number: int | None) -> TemplateVersion | None:
    versions = template.versions.select_related("template")
    if number is not None:
        return versions.filter(number=number).first()
    return versions.filter(state=VersionState.PUBLISHED).first()


def version_for_sending(*, code: str) -> TemplateVersion | None:
    """The version a new communication pins: the published one."""
    return versions_for_sending(codes=[code]).get(code)


# (version id, content hash) → content. From submission on a version's content is frozen (its
# hash proves it), so each process reads a published version's content once, not per request.
# Treat it as read-only: it is shared by every request of the process.
_frozen_content: dict[tuple[int, str], dict] = {}


# Code → (until, generation, version): the published versions a process has read, kept while the
# templates' generation is current (any save or delete of a template or a version starts a new
# one on commit, see `templates_changed`) and for at most PUBLISHED_KEEP_S. An API request then
# takes its template from memory, not from a query. Read-only, like the content above.
PUBLISHED_KEEP_S = 60.0
_published: dict[str, tuple[float, object, TemplateVersion]] = {}


def templates_changed(**kwargs) -> None:
    """A template or a version changed: kept versions are read again (here at once, in other
    processes when this commits)."""
    _published.clear()
    generations.changed(generations.TEMPLATES)


def versions_for_sending(*, codes: Iterable[str]) -> dict[str, TemplateVersion]:
    """Code → its published version (with its template), for the codes that have one: from the
    process's kept copies while they are current, else one query without the content, which
    comes from the process's copy once read."""
    wanted = set(codes)
    generation = generations.current(generations.TEMPLATES)  # before the rows it validates
    now = time.monotonic()
    found: dict[str, TemplateVersion] = {}
    for code in wanted:
        kept = _published.get(code)
        if kept is not None and kept[0] > now and kept[1] == generation:
            found[code] = kept[2]
    if len(found) < len(wanted):
        read = _published_versions_read(wanted - set(found))
        if len(_published) > 1000:
            _published.clear()
        for code, version in read.items():
            _published[code] = (now + PUBLISHED_KEEP_S, generation, version)
        found.update(read)
    return found


def _published_versions_read(codes: set[str]) -> dict[str, TemplateVersion]:
    found: dict[str, TemplateVersion] = {}
    for version in (
        TemplateVersion.objects.select_related("template")
        .filter(template__code__in=codes, state=VersionState.PUBLISHED)
        .defer("content")
        .order_by("template__code", "-number")
    ):
        found.setdefault(version.template.code, version)
    unread = [v.pk for v in found.values() if (v.pk, v.content_hash) not in _frozen_content]
    if unread:
        for pk, content_hash, content in TemplateVersion.objects.filter(pk__in=unread).values_list(
            "pk", "content_hash", "content"
        ):
            _frozen_content[(pk, content_hash)] = content
    for version in found.values():
        content = _frozen_content.get((version.pk, version.content_hash))
        if content is not None:  # else (re-hashed meanwhile) it loads on access, as before
            version.content = content
    return found


def versions_awaiting_review() -> QuerySet[Approval]:
    return Approval.objects.filter(
        state=ApprovalState.PENDING,
        subject_type=ContentType.objects.get_for_model(TemplateVersion),
    ).select_related("requested_by", "author")


def version_diff(version: TemplateVersion) -> list[dict]:
    """File by file, the unified diff of `version` against the published version."""
    live = version.template.published_version
    old_files = _diffable(live.content) if live and live.pk != version.pk else {}
    new_files = _diffable(version.content)
    label = f"v{live.number} (published)" if live and live.pk != version.pk else "nothing published"
    diffs = []
    for name in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(name, ""), new_files.get(name, "")
        if old == new:
            continue
        lines = list(
            difflib.unified_diff(
                old.splitlines(),
                new.splitlines(),
                fromfile=f"{name} — {label}",
                tofile=f"{name} — v{version.number}",
                lineterm="",
            )
        )
        diffs.append({"file": name, "lines": lines})
    return diffs


def _diffable(content: dict) -> dict[str, str]:
    files = dict(content.get("files", {}))
    for name, key in (("template.json", "meta"), ("schema.json", "schema")):
        files[name] = json.dumps(content.get(key, {}), indent=2, sort_keys=True)
    for name, sample in content.get("samples", {}).items():
        files[f"samples/{name}.json"] = json.dumps(sample, indent=2, sort_keys=True)
    for name, data in content.get("assets", {}).items():
        files[f"assets/{name}"] = (
            f"(binary, base64 SHA-256 {hashlib.sha256(data.encode()).hexdigest()[:16]})"
        )
    return files
