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
```

In the database the bundle is one JSON value: {"meta", "schema", "samples", "files", "assets"}
with assets base64-encoded; its SHA-256 over canonical JSON is the version's content hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from django.conf import settings

from documents.composition import PageSpec, Sources

RENDITIONS = {
    "print": ["print.html", "print.css"],
    "email": ["email.subject.txt", "email.html", "email.txt"],
    "sms": ["sms.txt"],
    "push": ["push.title.txt", "push.body.txt"],
}
CHANNELS = list(RENDITIONS)
TEXT_SUFFIXES = {".html", ".css", ".txt"}
MAX_BUNDLE_BYTES = 20 * 1024 * 1024

META_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["code", "name", "category", "channels"],
    "properties": {
        "code": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,99}$"},
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
        "static_sections": {"type": "array", "items": {"type": "string"}},
    },
}


class BundleInvalid(ValueError):
    """The bundle cannot become a template version; the message lists what to fix."""


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
        problems.append(f"schema.json is not a valid JSON Schema: {exc.message}")
    else:
        validator = jsonschema.Draft202012Validator(
            bundle.schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        for name, sample in bundle.samples.items():
            for error in validator.iter_errors(sample):
                where = ".".join(str(p) for p in error.absolute_path) or "(root)"
                problems.append(f"samples/{name}.json {where}: {error.message}")
    if not bundle.samples:
        problems.append("add at least one sample data set (samples/default.json)")
    size = sum(len(v.encode()) for v in bundle.files.values()) + sum(
        len(v) for v in bundle.assets.values()
    )
    if size > MAX_BUNDLE_BYTES:
        problems.append(f"the bundle is {size} bytes; the limit is {MAX_BUNDLE_BYTES}")
    if problems:
        raise BundleInvalid("; ".join(problems))


def read_folder(folder: Path) -> Bundle:
    """Read one template folder (see the module docstring)."""

    def load_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleInvalid(f"{path.name}: {exc}") from exc

    if not (folder / "template.json").is_file():
        raise BundleInvalid(f"{folder}: no template.json")
    meta = load_json(folder / "template.json")
    schema = load_json(folder / "schema.json") if (folder / "schema.json").exists() else {}
    samples = {path.stem: load_json(path) for path in sorted((folder / "samples").glob("*.json"))}
    files: dict[str, str] = {}
    assets: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel in {"template.json", "schema.json"} or rel.startswith("samples/"):
            continue
        if rel.startswith("assets/"):
            assets[rel.removeprefix("assets/")] = path.read_bytes()
        elif path.suffix in TEXT_SUFFIXES:
            files[rel] = path.read_text(encoding="utf-8")
    return Bundle(meta=meta, schema=schema, samples=samples, files=files, assets=assets)


def write_folder(bundle: Bundle, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def dump(path: Path, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    dump(folder / "template.json", bundle.meta)
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
    )
