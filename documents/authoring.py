"""Writing templates in the browser: the editor's files, where a problem is, new drafts.

The editor posts a version's files by path (the folder format of documents/bundle.py) and
`bundles.from_files` builds the bundle, as `templates_import` does for a folder in git, and
`services.bundle_check` decides whether it may be stored: the same content gives the same
stored version (and content hash) whichever way it came in.

Problems come back as text from several places (JSON parsing, the bundle's validation, the
sandbox's Jinja errors, the data's JSON Schema); `locate` turns each into the file and line
the author has to look at, so the editor can show it beside that line.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from django.db import transaction

from documents import assets, services
from documents import bundle as bundles
from documents.composition import CompositionError
from documents.models import Template, TemplateVersion, VersionState

# What a sandbox error names (documents/composition.py's _PARTS) → the file in the bundle.
PART_FILES = {
    "print.html": "print.html",
    "email.subject": "email.subject.txt",
    "email.html": "email.html",
    "email.txt": "email.txt",
    "sms.txt": "sms.txt",
    "push.title": "push.title.txt",
    "push.body": "push.body.txt",
}
# "print.html line 4: …", "email.html (footer.html) line 2: …", "schema.json line 3: …"
_LINE_RE = re.compile(r"(?P<part>[\w.:/-]+)(?: \((?P<inner>[^)]+)\))? line (?P<line>\d+): ")
# "samples/default.json balance: …", "template.json channels.0: …", "schema.json a.b: not …"
_PATH_RE = re.compile(
    r"^(?P<file>template\.json|schema\.json|samples/[\w.-]+\.json) (?P<path>\S+): "
)
_FILE_RE = re.compile(
    r"(?P<file>template\.json|schema\.json|samples/[\w.-]+\.json|(?:lang/[a-z]{2}/)?"
    r"(?:print\.html|print\.css|email\.subject\.txt|email\.html|email\.txt|sms\.txt|"
    r"push\.title\.txt|push\.body\.txt|(?:partials|static)/[\w.-]+))"
)
STARTER_FILES = {
    "print.html": ("<h1>Dear {{ customer.name }}</h1>\n<p>Write the letter here.</p>\n"),
    "print.css": "h1 { font-size: 16pt; }\n",
    "email.subject.txt": "A message for {{ customer.name }}\n",
    "email.html": "<p>Dear {{ customer.name }},</p>\n<p>Write the email here.</p>\n",
    "email.txt": "Dear {{ customer.name }},\n\nWrite the email here.\n",
    "sms.txt": "Write the text message here, {{ customer.name }}.\n",
    "push.title.txt": "A message for you\n",
    "push.body.txt": "Write the notification here.\n",
}
STARTER_SCHEMA = {
    "type": "object",
    "required": ["customer"],
    "properties": {
        "customer": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        }
    },
}


@dataclass(frozen=True)
class Problem:
    """One thing to fix: the file it is in ("" when it names none), the line (None when it
    cannot be placed) and the message."""

    file: str
    line: int | None
    message: str


def _json_line(text: str, path: list[str]) -> int | None:
    """The line of the key at `path` (object keys; list indexes are skipped) in a JSON text."""
    pos, found = 0, None
    for key in path:
        if key.isdigit():
            continue
        match = re.compile(r'"' + re.escape(key) + r'"\s*:').search(text, pos)
        if match is None:
            break
        pos, found = match.end(), match.start()
    return None if found is None else text.count("\n", 0, found) + 1


def _file_for(name: str, files: Mapping[str, str], language: str) -> str:
    """The bundle file a sandbox name means, in the language previewed where it has one."""
    if name.startswith("static:"):
        rel = f"static/{name.removeprefix('static:')}"
        rel = rel if rel.endswith(".html") else rel + ".html"
    elif name in PART_FILES:
        rel = PART_FILES[name]
    elif name in files or "/" in name or name.endswith(".json"):
        rel = name
    else:
        rel = f"partials/{name}"
    localised = f"lang/{language}/{rel}"
    return localised if localised in files else rel


def locate(message: str, *, files: Mapping[str, str], language: str = "en") -> Problem:
    """Where `message` points, in the editor's `files` (path → text)."""
    if match := _LINE_RE.search(message):
        name = match.group("inner") or match.group("part")
        return Problem(_file_for(name, files, language), int(match.group("line")), message)
    if match := _PATH_RE.match(message):
        rel, path = match.group("file"), match.group("path")
        line = 1 if path == "(root)" else _json_line(files.get(rel, ""), path.split("."))
        return Problem(rel, line, message)
    if match := _FILE_RE.search(message):
        return Problem(match.group("file"), None, message)
    return Problem("", None, message)


def problems_of(
    exc: bundles.BundleInvalid | CompositionError,
    *,
    files: Mapping[str, str],
    language: str = "en",
    sample: str = "default",
) -> list[Problem]:
    """Every problem `exc` reports, placed in the editor's files."""
    if isinstance(exc, bundles.BundleInvalid):
        return [locate(m, files=files, language=language) for m in exc.problems]
    if exc.errors:
        # The sample does not match the schema: each field's error at its line in the sample.
        rel = f"samples/{sample}.json"
        return [
            Problem(
                rel, _json_line(files.get(rel, ""), e.field.split(".")), f"{e.field}: {e.message}"
            )
            for e in exc.errors
        ]
    return [locate(exc.reason, files=files, language=language)]


# --- the editor's files ----------------------------------------------------------------------


def editor_files(bundle: bundles.Bundle) -> dict[str, str]:
    """A bundle as the files the editor shows, by path: the JSON ones pretty-printed, and an
    empty file for each rendition its channels need but it lacks (to be filled in)."""
    dump = lambda value: json.dumps(value, indent=2, ensure_ascii=False) + "\n"  # noqa: E731
    files = {"template.json": dump(bundle.meta), "schema.json": dump(bundle.schema)}
    files |= {f"samples/{name}.json": dump(data) for name, data in bundle.samples.items()}
    for channel in bundle.meta.get("channels", []) if isinstance(bundle.meta, dict) else []:
        for rel in bundles.RENDITIONS.get(channel, []):
            files.setdefault(rel, "")
    files |= bundle.files
    order = ["template.json", "schema.json"]
    return dict(sorted(files.items(), key=lambda kv: (kv[0] not in order, _rank(kv[0]), kv[0])))


def _rank(rel: str) -> int:
    renditions = [r for names in bundles.RENDITIONS.values() for r in names]
    if rel in {"template.json"}:
        return 0
    if rel.startswith("samples/"):
        return 1
    if rel in renditions:
        return 2 + renditions.index(rel)
    return 20


def editor_language(bundle: bundles.Bundle) -> str:
    languages = bundle.meta.get("languages") if isinstance(bundle.meta, dict) else None
    return (languages or ["en"])[0]


def editor_fields(files: Mapping[str, str], problems: list[Problem]) -> list[dict]:
    """One editor field per file: its text, its line numbers with the problems at each, and
    enough rows to show it whole (so the numbers beside it line up without a script). A file
    a problem names but the author emptied (a rendition a channel needs) gets a field too."""
    paths = list(files) + [p.file for p in problems if p.file and p.file not in files]
    fields = []
    for rel in dict.fromkeys(paths):
        text = files.get(rel, "")
        count = max(text.count("\n") + (0 if text.endswith("\n") else 1), 1)
        mine = [p for p in problems if p.file == rel]
        at: dict[int, list[str]] = {}
        for problem in mine:
            if problem.line is not None:
                at.setdefault(min(problem.line, count + 1), []).append(problem.message)
        count = max(count, *at.keys()) if at else count
        fields.append(
            {
                "path": rel,
                "id": "f-" + re.sub(r"[^a-z0-9]+", "-", rel.lower()).strip("-"),
                "text": text,
                "rows": count + 1,
                "lines": [{"number": n, "problems": at.get(n, [])} for n in range(1, count + 2)],
                "problems": mine,
            }
        )
    return fields


def posted_files(texts: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The editor's posted files, by path; an emptied file is left out (that removes it)."""
    return {rel: text for rel, text in texts if text.strip()}


def editor_bundle(files: Mapping[str, str], *, assets: Mapping[str, bytes]) -> bundles.Bundle:
    """The bundle the editor's files make: bundles.from_files, the one way content is built."""
    return bundles.from_files(files, assets)


# --- images and fonts ---------------------------------------------------------------------------


def asset_add(*, version: TemplateVersion, filename: str, size: int, read, by) -> str:
    """Store an uploaded image or font in the draft as saved, under the name the author types
    as "asset:<name>" (returned); an asset of that name is replaced. The size is checked
    before the file is read. Raises assets.AssetRefused, or what saving a draft raises."""
    name = assets.upload_name(filename)
    assets.check_size(name, size)
    data = read()
    assets.check(name, data)
    stored = services.version_bundle(version)
    _assets_store(version, stored, {**stored.assets, name: data}, by)
    return name


def asset_remove(*, version: TemplateVersion, name: str, by) -> None:
    stored = services.version_bundle(version)
    if name not in stored.assets:
        raise assets.AssetRefused(f"{name}: this draft has no such asset.")
    _assets_store(version, stored, {k: v for k, v in stored.assets.items() if k != name}, by)


def _assets_store(version: TemplateVersion, stored: bundles.Bundle, kept: dict, by) -> None:
    # The assets are part of the version's content (and hash): they are frozen and signed off
    # with it, and a published version's cannot change (template_version_update refuses).
    services.template_version_update(
        version=version, bundle=dataclasses.replace(stored, assets=kept), by=by
    )


def editor_assets(bundle: bundles.Bundle) -> list[assets.AssetInfo]:
    return [assets.info(name, data) for name, data in sorted(bundle.assets.items())]


# --- new templates and drafts ------------------------------------------------------------------


@transaction.atomic
def template_start(
    *, code: str, name: str, category: str, channels: list[str], by
) -> TemplateVersion:
    """A new template with a first draft an author can fill in: a rendition per channel, a
    schema with the customer's name, and a sample."""
    files = {rel: STARTER_FILES[rel] for c in channels for rel in bundles.RENDITIONS[c]}
    meta = {
        "code": code,
        "name": name,
        "category": category,
        "languages": ["en"],
        "channels": channels,
    }
    bundle = bundles.Bundle(
        meta=meta,
        schema=STARTER_SCHEMA,
        samples={"default": {"customer": {"name": "Ada Lovelace"}}},
        files=files,
        assets={},
    )
    template = services.template_create(code=code, name=name, category=category, by=by)
    return services.template_version_create(template=template, bundle=bundle, by=by, source="ui")


def draft_start(*, template: Template, by) -> TemplateVersion:
    """A new draft holding the published version's content (else the latest version's)."""
    base = template.published_version or template.versions.order_by("-number").first()
    if base is None:
        raise services.VersionFrozen("This template has no version to start from.")
    return services.template_version_create(
        template=template, bundle=services.version_bundle(base), by=by, source=f"ui:v{base.number}"
    )


def open_draft(template: Template) -> TemplateVersion | None:
    return template.versions.filter(state=VersionState.DRAFT).order_by("-number").first()
