"""A template version's content as a bundle of files, the same shape as a folder kept in git.

```
<code>/template.json   metadata (name, category, channels, page, delivery, release, …)
<code>/schema.json     JSON Schema of the data the template needs
<code>/print.html …    one file per channel rendition (print.css, email.subject.txt, email.html,
                       email.txt, sms.txt, push.title.txt, push.body.txt)
<code>/partials/*.html fragments for {% include %}
<code>/static/*.html   static inserts, laid out once per version
<code>/assets/*        images and fonts, referenced as "asset:<name>"
<code>/samples/*.json  sample data sets for proofs
<code>/lang/<xx>/…     per-language variants of any rendition or partial
<code>/messages/<xx>.json  the message catalog of language xx: {"English text": "translation"},
                       read by _("English text") in every rendition, partial, insert and print.css
```

Shared parts keep a library's house style in one place. A library may hold
`_shared/<name>/` folders (never templates: they have no template.json) with any of
`print.css`, `partials/*`, `static/*`, `messages/*.json` and `assets/*`; a template opts in with
`"shared": ["<name>", …]` in its template.json. read_folder merges each named part in order:
its partials, static inserts and assets are added unless the template (or a part named later)
has a file at the same path, its message catalogs are merged key by key (the template's own
messages win), and its print.css is prepended to the template's print.css (and to
every lang/<xx>/print.css), followed by a comment naming the part, so that the template's own
rules come last and win the cascade.

In the database the bundle is one JSON value: {"meta", "schema", "samples", "files", "assets"}
with assets base64-encoded; its SHA-256 over canonical JSON is the version's content hash.
The stored bundle is self-contained: shared parts are already merged in and `shared` is dropped
from its meta, so a house-style change gives every template using it a new content hash (a new
draft on import), and regenerating an old document never depends on today's `_shared` folder.
Export (write_folder) therefore writes the flattened bundle: the merged files and no `shared`
key, which imports back unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from django.conf import settings

from documents import addressee
from documents import assets as asset_rules
from documents.composition import PAGE_MAX_MM, PAGE_MIN_MM, PageSpec, Sources

RENDITIONS = {
    "print": ["print.html", "print.css"],
    "email": ["email.subject.txt", "email.html", "email.txt"],
    "sms": ["sms.txt"],
    "push": ["push.title.txt", "push.body.txt"],
}
CHANNELS = list(RENDITIONS)
TEXT_SUFFIXES = {".html", ".css", ".txt"}
MAX_BUNDLE_BYTES = 20 * 1024 * 1024
SLUG = "^[a-z0-9][a-z0-9_-]{0,99}$"
SHARED_FOLDER = "_shared"

META_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["code", "name", "category", "channels"],
    "properties": {
        "code": {"type": "string", "pattern": SLUG},
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "category": {"enum": ["regulatory", "transactional", "service", "marketing"]},
        "description": {"type": "string"},
        "owner": {"type": "string"},
        "languages": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{2}$"}},
        "channels": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": CHANNELS},
        },
        "page": {
            "type": "object",
            "properties": {"size": {"type": "string"}, "margin": {"type": "string"}},
        },
        "delivery": {"enum": ["attach", "portal_link"]},
        "requires_action": {
            "type": ["object", "null"],
            "properties": {"kind": {"type": "string"}, "label": {"type": "string"}},
        },
        "release": {
            "type": "object",
            "properties": {
                "required": {"type": "boolean"},
                "threshold": {
                    "type": ["object", "null"],
                    "required": ["field", "above"],
                    "properties": {"field": {"type": "string"}, "above": {"type": "number"}},
                },
            },
        },
        "sensitive": {"type": "boolean"},
        # Where a failed delivery goes next (notifications/pipeline/fallback.py); [] for never.
        "fallback": {"type": "array", "uniqueItems": True, "items": {"enum": CHANNELS}},
        # Reminders when the customer has not viewed / actioned it
        # (notifications/pipeline/followups.py).
        "follow_ups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["after_days"],
                "additionalProperties": False,
                "properties": {
                    "unless": {"enum": ["viewed", "actioned"]},
                    "after_days": {"type": "number", "exclusiveMinimum": 0},
                    "template": {"type": "string", "pattern": SLUG},
                    "channel": {"enum": CHANNELS},
                    "max": {"type": "integer", "minimum": 1, "maximum": 10},
                },
            },
        },
        "static_sections": {"type": "array", "items": {"type": "string"}},
        "shared": {
            "type": "array",
            "uniqueItems": True,
            "items": {"type": "string", "pattern": SLUG},
        },
    },
}


class BundleInvalid(ValueError):
    """The bundle cannot become a template version; the message lists what to fix, and
    `problems` holds each on its own (each starts with the file it is about)."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def _refuse(problems: list[str]) -> BundleInvalid:
    return BundleInvalid("; ".join(problems), problems=problems)


_MM_PER_UNIT = {"mm": 1.0, "cm": 10.0, "q": 0.25, "in": 25.4, "pt": 25.4 / 72, "pc": 25.4 / 6}
_MM_PER_UNIT["px"] = 25.4 / 96
_LENGTH_RE = re.compile(r"^(-?\d+(?:\.\d+)?)([a-z]+)$")


def _lengths_mm(value: str) -> list[tuple[str, float]]:
    """The absolute lengths in a CSS value ("210mm 297mm", "20mm 18mm"), in millimetres."""
    out = []
    for token in value.lower().split():
        match = _LENGTH_RE.match(token)
        if match and match.group(2) in _MM_PER_UNIT:
            out.append((token, float(match.group(1)) * _MM_PER_UNIT[match.group(2)]))
    return out


def page_problems(page: Any) -> list[str]:
    """What is wrong with template.json's page size and margins, in words an author can act on."""
    if not isinstance(page, dict):
        return []
    problems = []
    for token, mm in _lengths_mm(str(page.get("size", ""))):
        if not PAGE_MIN_MM <= mm <= PAGE_MAX_MM:
            problems.append(
                f"template.json page.size: {token} is not a page size; a side must measure "
                f"between {PAGE_MIN_MM:g} mm and {PAGE_MAX_MM:g} mm (A4 is 210mm 297mm)"
            )
    for token, mm in _lengths_mm(str(page.get("margin", ""))):
        if not 0 <= mm <= PAGE_MAX_MM / 4:
            problems.append(
                f"template.json page.margin: {token} leaves no room for the letter; margins "
                f"must be between 0 and {PAGE_MAX_MM / 4:g} mm"
            )
    return problems


def refuse_links(path: Path, *, root: Path) -> None:
    """Refuse a symbolic link at `path`, below it or between `root` and it, and anything that
    resolves outside `root`: a library is read as it is in git, never through a link to
    somewhere else on the machine."""
    real_root = root.resolve()
    candidates = [path]
    with contextlib.suppress(ValueError):
        rel = path.relative_to(root)
        candidates += [root / Path(*rel.parts[:i]) for i in range(1, len(rel.parts))]
    if path.is_dir() and not path.is_symlink():
        for current, dirs, files in os.walk(path):
            candidates += [Path(current) / name for name in dirs + files]
    for candidate in candidates:
        if candidate.is_symlink():
            raise BundleInvalid(
                f"{candidate} is a symbolic link; a template library may not contain links "
                "(copy the file or folder in instead)"
            )
        if not candidate.resolve().is_relative_to(real_root):
            raise BundleInvalid(f"{candidate} resolves outside the library {root}")


@dataclass(frozen=True)
class Bundle:
    meta: dict
    schema: dict
    samples: dict
    files: dict[str, str]
    assets: dict[str, bytes]

    def to_content(self) -> dict:
        return {
            "meta": self.meta,
            "schema": self.schema,
            "samples": self.samples,
            "files": dict(sorted(self.files.items())),
            "assets": {
                name: base64.b64encode(data).decode("ascii")
                for name, data in sorted(self.assets.items())
            },
        }

    @classmethod
    def from_content(cls, content: dict) -> Bundle:
        return cls(
            meta=content.get("meta", {}),
            schema=content.get("schema", {}),
            samples=content.get("samples", {}),
            files=content.get("files", {}),
            assets={k: base64.b64decode(v) for k, v in content.get("assets", {}).items()},
        )


def content_hash(content: dict) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate(bundle: Bundle) -> None:
    """Refuse a bundle that could never render: bad metadata, a missing rendition or static
    section, an invalid schema, sample data that fails its own schema."""
    problems: list[str] = []
    for error in jsonschema.Draft202012Validator(META_SCHEMA).iter_errors(bundle.meta):
        where = ".".join(str(p) for p in error.absolute_path) or "template.json"
        problems.append(f"template.json {where}: {error.message}")
    for channel in bundle.meta.get("channels", []):
        for name in RENDITIONS.get(channel, []):
            if name not in bundle.files and name != "print.css":
                problems.append(f"channel {channel} needs {name}")
    for section in bundle.meta.get("static_sections", []):
        if f"static/{section}.html" not in bundle.files:
            problems.append(f"static section {section!r} needs static/{section}.html")
    try:
        jsonschema.Draft202012Validator.check_schema(bundle.schema)
    except jsonschema.SchemaError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        where = f" {where}" if where else ""
        problems.append(f"schema.json{where}: not a valid JSON Schema: {exc.message}")
    else:
        validator = jsonschema.Draft202012Validator(
            bundle.schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        problems += addressee.schema_problems(bundle.schema)
        for name, sample in bundle.samples.items():
            for error in validator.iter_errors(sample):
                where = ".".join(str(p) for p in error.absolute_path) or "(root)"
                problems.append(f"samples/{name}.json {where}: {error.message}")
            # A sample is addressed to its own `customer` block: its identity fields must
            # name that sample customer, as a real request's must name the real one.
            if isinstance(sample, dict):
                for field in addressee.identity_errors(
                    bundle.schema, sample, addressee.sample_addressee(sample)
                ):
                    problems.append(f"samples/{name}.json {field.field}: {field.message}")
    problems += page_problems(bundle.meta.get("page"))
    problems += _catalog_problems(bundle)
    problems += asset_problems(bundle.assets)
    if not bundle.samples:
        problems.append("add at least one sample data set (samples/default.json)")
    size = sum(len(v.encode()) for v in bundle.files.values()) + sum(
        len(v) for v in bundle.assets.values()
    )
    if size > MAX_BUNDLE_BYTES:
        problems.append(f"the bundle is {size} bytes; the limit is {MAX_BUNDLE_BYTES}")
    if problems:
        raise _refuse(problems)


def asset_problems(assets: Mapping[str, bytes]) -> list[str]:
    """Each asset the template may not carry, in words (documents/assets.py's rules)."""
    problems = []
    for name, data in sorted(assets.items()):
        try:
            asset_rules.check(name, data)
        except asset_rules.AssetRefused as exc:
            problems.append(f"assets/{exc}")
    return problems


def read_folder(folder: Path, *, shared_root: Path | None = None) -> Bundle:
    """Read one template folder (see the module docstring), merging in the shared parts its
    template.json names from `shared_root` (by default the `_shared` folder beside it)."""

    refuse_links(folder, root=folder.parent)
    if not (folder / "template.json").is_file():
        raise BundleInvalid(f"{folder}: no template.json")
    texts, assets = _read_files(folder, json_too=True)
    bundle = from_files(texts, assets)
    meta, files = bundle.meta, bundle.files
    if isinstance(meta, dict) and "shared" in meta:
        shared = meta.pop("shared")
        _check_shared(shared)
        root = folder.parent / SHARED_FOLDER if shared_root is None else shared_root
        for name in shared:
            # The default _shared folder is part of the library; a named shared root is one.
            refuse_links(root / name, root=folder.parent if shared_root is None else root)
        files, assets = _merge_shared(files, assets, names=shared, root=root)
    return Bundle(
        meta=meta, schema=bundle.schema, samples=bundle.samples, files=files, assets=assets
    )


def _json_line(message: str, lineno: int) -> str:
    return f"{message} (line {lineno})"


def from_files(texts: Mapping[str, str], assets: Mapping[str, bytes] | None = None) -> Bundle:
    """The bundle a set of files makes, by path in the folder format (template.json,
    schema.json, samples/<name>.json, the renditions, partials/, static/, lang/, messages/): the
    one way a version's content is built, whether the files come from a folder kept in git or
    from the browser editor. Line endings are normalised, so the same text gives the same
    content hash however it was typed or checked out. A file that is not JSON where JSON is
    needed is refused with its line (``schema.json line 3: Expecting ',' delimiter``)."""
    problems: list[str] = []

    def load_json(rel: str) -> Any:
        try:
            return json.loads(normalise_text(texts[rel]))
        except json.JSONDecodeError as exc:
            problems.append(f"{rel} line {exc.lineno}: {exc.msg} (column {exc.colno})")
            return {}

    if "template.json" not in texts:
        raise BundleInvalid("no template.json")
    meta = load_json("template.json")
    schema = load_json("schema.json") if "schema.json" in texts else {}
    samples = {
        rel.removeprefix("samples/").removesuffix(".json"): load_json(rel)
        for rel in sorted(texts)
        if rel.startswith("samples/") and rel.endswith(".json") and rel.count("/") == 1
    }
    files = {
        rel: normalise_text(text)
        for rel, text in texts.items()
        if rel not in {"template.json", "schema.json"}
        and not rel.startswith("samples/")
        and (Path(rel).suffix in TEXT_SUFFIXES or _is_catalog(rel))
    }
    if problems:
        raise _refuse(problems)
    return Bundle(meta=meta, schema=schema, samples=samples, files=files, assets=dict(assets or {}))


def normalise_text(text: str) -> str:
    """Text as a checkout with universal newlines reads it: a browser posts CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_files(folder: Path, *, json_too: bool = False) -> tuple[dict[str, str], dict[str, bytes]]:
    files: dict[str, str] = {}
    assets: dict[str, bytes] = {}
    suffixes = TEXT_SUFFIXES | {".json"} if json_too else TEXT_SUFFIXES
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel.startswith("assets/"):
            assets[rel.removeprefix("assets/")] = path.read_bytes()
        elif path.suffix in suffixes or _is_catalog(rel):
            try:
                files[rel] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise BundleInvalid(f"{rel}: {exc}") from exc
    return files, assets


_CATALOG_RE = re.compile(r"^messages/([a-z]{2})\.json$")
# _("…") or _('…') in a rendition, partial, insert or print.css: the text to translate.
_MESSAGE_USE_RE = re.compile(
    r"""(?<![\w-])_\(\s*(?:"((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)')\s*\)"""
)


def _is_catalog(rel: str) -> bool:
    return bool(_CATALOG_RE.match(rel))


def catalog(bundle: Bundle, language: str) -> dict[str, str]:
    """The message catalog of `language` ({} when the bundle has none or it is not an object
    of texts; validate() says what is wrong with it)."""
    text = bundle.files.get(f"messages/{language}.json")
    if text is None:
        return {}
    try:
        messages = json.loads(text)
    except json.JSONDecodeError:
        return {}
    if not isinstance(messages, dict):
        return {}
    return {k: v for k, v in messages.items() if isinstance(v, str)}


def messages_used(bundle: Bundle) -> set[str]:
    """Every text the bundle's files pass to _(), from any rendition, partial, insert or CSS."""
    used = set()
    for rel, text in bundle.files.items():
        if _is_catalog(rel):
            continue
        for double, single in _MESSAGE_USE_RE.findall(text):
            used.add(re.sub(r"\\(.)", r"\1", double or single))
    return used


def _catalog_problems(bundle: Bundle) -> list[str]:
    problems = []
    for rel, text in sorted(bundle.files.items()):
        if not _is_catalog(rel):
            continue
        try:
            messages = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{rel}: not JSON ({exc})")
            continue
        if not isinstance(messages, dict) or not all(isinstance(v, str) for v in messages.values()):
            problems.append(f'{rel}: must be an object of texts, {{"English text": "translation"}}')
    used = messages_used(bundle)
    for language in bundle.meta.get("languages", []):
        if language == "en" or not used:
            continue
        missing = sorted(used - set(catalog(bundle, language)))
        if missing:
            shown = ", ".join(repr(m[:60]) for m in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            problems.append(
                f"messages/{language}.json has no translation of {shown}{more}: the {language} "
                "rendition would print them in English"
            )
    return problems


def _check_shared(shared: Any) -> None:
    # Checked here rather than left to validate(): the names become paths before validate runs.
    validator = jsonschema.Draft202012Validator(META_SCHEMA["properties"]["shared"])
    problems = [
        f"template.json shared{''.join(f'.{p}' for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(shared)
    ]
    if problems:
        raise BundleInvalid("; ".join(problems))


def _merge_shared(
    files: dict[str, str], assets: dict[str, bytes], *, names: list[str], root: Path
) -> tuple[dict[str, str], dict[str, bytes]]:
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        raise BundleInvalid(
            f"template.json names shared part(s) {', '.join(missing)} not found in {root}"
        )
    merged_files: dict[str, str] = {}
    merged_assets: dict[str, bytes] = {}
    catalogs: dict[str, dict] = {}
    css_prefix = ""
    for name in names:
        part_files, part_assets = _read_files(root / name)
        css = part_files.pop("print.css", None)
        unexpected = [
            rel
            for rel in part_files
            if not rel.startswith(("partials/", "static/")) and not _is_catalog(rel)
        ]
        if unexpected:
            raise BundleInvalid(
                f"shared part {name} holds {', '.join(unexpected)}; a shared part holds only "
                "print.css, partials/, static/, messages/ and assets/"
            )
        for rel in [rel for rel in part_files if _is_catalog(rel)]:
            catalogs[rel] = {**catalogs.get(rel, {}), **_load_catalog(part_files.pop(rel), rel)}
        merged_files |= part_files
        merged_assets |= part_assets
        if css is not None:
            css_prefix += css if css.endswith("\n") else css + "\n"
            css_prefix += f'/* ---------- end of shared part "{name}" ---------- */\n'
    merged_files |= files
    merged_assets |= assets
    for rel, messages in catalogs.items():
        own = _load_catalog(files[rel], rel) if rel in files else {}
        merged_files[rel] = json.dumps({**messages, **own}, indent=2, ensure_ascii=False) + "\n"
    if css_prefix:
        for rel in {"print.css"} | {r for r in files if _is_lang_print_css(r)}:
            merged_files[rel] = css_prefix + files.get(rel, "")
    return merged_files, merged_assets


def _load_catalog(text: str, rel: str) -> dict:
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleInvalid(f"{rel}: not JSON ({exc})") from exc
    if not isinstance(messages, dict):
        raise BundleInvalid(f'{rel}: must be an object of texts, {{"English text": "translation"}}')
    return messages


def _is_lang_print_css(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) == 3 and parts[0] == "lang" and parts[2] == "print.css"


def write_folder(bundle: Bundle, folder: Path) -> None:
    """Write the bundle in the folder format. Shared parts stay flattened (see the module
    docstring): a `shared` key is left out of template.json, since its files are already merged."""
    folder.mkdir(parents=True, exist_ok=True)

    def dump(path: Path, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    dump(folder / "template.json", {k: v for k, v in bundle.meta.items() if k != "shared"})
    dump(folder / "schema.json", bundle.schema)
    for name, sample in bundle.samples.items():
        dump(folder / "samples" / f"{name}.json", sample)
    for rel, text in bundle.files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for name, data in bundle.assets.items():
        path = folder / "assets" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def locale_for(language: str) -> str:
    return settings.CCM_LOCALES.get(language, language)


def sources(bundle: Bundle, language: str) -> Sources:
    """The composition engine's view of one language of the bundle."""

    def pick(name: str) -> str:
        return bundle.files.get(f"lang/{language}/{name}", bundle.files.get(name, ""))

    partial_names = {
        rel.split("/", 1)[1] for rel in bundle.files if rel.startswith("partials/")
    } | {
        rel.removeprefix(f"lang/{language}/partials/")
        for rel in bundle.files
        if rel.startswith(f"lang/{language}/partials/")
    }
    page = bundle.meta.get("page", {})
    return Sources(
        print_html=pick("print.html"),
        print_css=pick("print.css"),
        email_subject=pick("email.subject.txt"),
        email_html=pick("email.html"),
        email_text=pick("email.txt"),
        sms_text=pick("sms.txt"),
        push_title=pick("push.title.txt"),
        push_body=pick("push.body.txt"),
        partials={name: pick(f"partials/{name}") for name in sorted(partial_names)},
        static_sections={
            name: pick(f"static/{name}.html") for name in bundle.meta.get("static_sections", [])
        },
        assets=bundle.assets,
        page=PageSpec(size=page.get("size", "A4"), margin=page.get("margin", "18mm")),
        messages=catalog(bundle, language),
    )


# The house style names its colours as custom properties in print.css (`:root { --brand: … }`);
# screens that show a document (the customer portal) take them from there.
_COLOUR_RE = re.compile(r"--(brand|brand-accent)\s*:\s*(#[0-9A-Fa-f]{3}(?:[0-9A-Fa-f]{3})?)\s*[;}]")


def house_colours(content: dict) -> dict[str, str]:
    """{"brand": "#0B4F6C", "brand-accent": "#35C4B5"} from a stored bundle's print.css (only
    plain hex colours, so what a template declares cannot smuggle CSS into a page)."""
    css = content.get("files", {}).get("print.css", "")
    return {name: value for name, value in _COLOUR_RE.findall(css)}
