"""The evidence pack of a campaign: a PDF report, a CSV of every recipient and a manifest of
the audit-chain events that cover it, zipped byte-reproducibly (same campaign, same bytes)."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from html import escape

import weasyprint
from django.conf import settings
from django.db.models import Count

from ccm.audit import subject_label
from ccm.audit_checkpoints import key_id
from ccm.models import AuditEvent
from documents import signing
from documents.composition import CompositionError, chart
from documents.rendering import SafeURLFetcher
from documents.services import template_preview
from notifications.campaigns.models import Campaign, CampaignRecipient
from notifications.campaigns.selectors import unreached
from notifications.models import Delivery

# Zip entries carry this time: the pack's bytes depend on the campaign, never on the clock.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
CSV_COLUMNS = [
    "reference",
    "source_system",
    "recipient_state",
    "reason",
    "communication_id",
    "communication_state",
    "channel",
    "address",
    "delivery_state",
    "sent_at",
    "delivered_at",
    "document_sha256",
]


def _iso(moment) -> str:
    return moment.isoformat() if moment else ""


def recipients_csv(campaign: Campaign) -> bytes:
    """One row per recipient and delivery (a recipient without a delivery: one row), sorted by
    reference, channel and delivery."""
    recipients = list(
        CampaignRecipient.objects.filter(campaign=campaign)
        .select_related("customer", "communication__document")
        .order_by("customer__source_system", "customer__external_ref", "customer_id")
    )
    deliveries: dict[int, list[Delivery]] = defaultdict(list)
    communication_ids = [r.communication_id for r in recipients if r.communication_id]
    for delivery in Delivery.objects.filter(communication_id__in=communication_ids).order_by(
        "communication_id", "channel", "id"
    ):
        deliveries[delivery.communication_id].append(delivery)
    reasons = unreached(campaign)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for recipient in recipients:
        communication = recipient.communication
        base = [
            recipient.customer.external_ref,
            recipient.customer.source_system,
            recipient.state,
            reasons.get(recipient.pk, recipient.reason),
            communication.pk if communication else "",
            communication.state if communication else "",
        ]
        sha = communication.document.sha256 if communication and communication.document else ""
        mine: list[Delivery | None] = [*deliveries.get(recipient.communication_id or 0, [])]
        mine = mine or [None]
        for delivery in mine:
            if delivery is None:
                writer.writerow([*base, "", "", "", "", "", sha])
            else:
                writer.writerow(
                    [
                        *base,
                        delivery.channel,
                        delivery.address,
                        delivery.state,
                        _iso(delivery.sent_at),
                        _iso(delivery.delivered_at),
                        sha,
                    ]
                )
    return out.getvalue().encode()


def covering_events(campaign: Campaign) -> list[AuditEvent]:
    """The chain's events about the campaign and its sign-off, in chain order."""
    subjects = [subject_label(campaign)]
    if campaign.approval is not None:
        subjects.append(subject_label(campaign.approval))
    events = AuditEvent.objects.none()
    for subject_type, subject_id in subjects:
        events = events | AuditEvent.objects.filter(
            subject_type=subject_type, subject_id=subject_id
        )
    return list(events.order_by("id"))


def manifest(campaign: Campaign, files: dict[str, bytes], *, report_signature: dict) -> bytes:
    approval = campaign.approval
    body = {
        "report_signature": report_signature,
        "campaign": {
            "id": campaign.pk,
            "name": campaign.name,
            "state": campaign.state,
            "category": campaign.category,
            "template": campaign.template_version.template.code,
            "template_version": campaign.template_version.number,
            "template_content_hash": campaign.template_version.content_hash,
            "segment": campaign.segment_snapshot,
            "audience_hash": campaign.audience_hash,
            "audience_count": campaign.audience_count,
            "channel_plan": campaign.channel_plan,
            "submitted_by": campaign.submitted_by.username if campaign.submitted_by else None,
            "submitted_at": _iso(campaign.submitted_at),
            "approved_by": approval.decided_by.username
            if approval is not None and approval.decided_by
            else None,
            "approved_at": _iso(campaign.approved_at),
            "started_at": _iso(campaign.started_at),
            "completed_at": _iso(campaign.completed_at),
        },
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        "audit_events": [
            {
                "id": event.pk,
                "created_at": _iso(event.created_at),
                "action": event.action,
                "actor": event.actor_label,
                "subject": f"{event.subject_type}:{event.subject_id}",
                "prev_hash": event.prev_hash,
                "hash": event.hash,
            }
            for event in covering_events(campaign)
        ],
    }
    return json.dumps(body, indent=2, sort_keys=True).encode()


REPORT_CSS = """
@page { size: A4; margin: 18mm; @bottom-right { content: counter(page) " / " counter(pages); } }
body { font-family: 'DejaVu Sans', sans-serif; font-size: 10pt; color: #1d2433; }
h1 { font-size: 16pt; } h2 { font-size: 12pt; margin-top: 14pt; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #d0d6df; text-align: left; padding: 3pt; vertical-align: top; }
code { font-size: 8pt; word-break: break-all; }
"""


def _outcomes(campaign: Campaign) -> dict[str, Counter]:
    outcome: dict[str, Counter] = defaultdict(Counter)
    for channel, state in Delivery.objects.filter(
        communication_id__in=CampaignRecipient.objects.filter(
            campaign=campaign, communication__isnull=False
        ).values("communication_id")
    ).values_list("channel", "state"):
        outcome[channel][state] += 1
    return outcome


def report_pdf(campaign: Campaign, states: Counter, events: list[AuditEvent]) -> bytes:
    approval = campaign.approval
    approver = approval.decided_by if approval and approval.decided_by else ""
    snapshot = campaign.segment_snapshot
    outcome = _outcomes(campaign)
    rows = "".join(
        f"<tr><td>{escape(channel)}</td><td>"
        + ", ".join(f"{escape(s)}: {n}" for s, n in sorted(counts.items()))
        + "</td></tr>"
        for channel, counts in sorted(outcome.items())
    )
    channels = sorted(outcome)
    graph = (
        chart(
            "bar",
            channels,
            [sum(outcome[c].values()) for c in channels],
            title="Deliveries per channel",
        )
        if channels
        else ""
    )
    reasons = unreached(campaign)
    skipped = "".join(
        f"<tr><td>{escape(ref)}</td><td>{escape(reasons[pk])}</td></tr>"
        for pk, ref in CampaignRecipient.objects.filter(pk__in=list(reasons))
        .order_by("customer__external_ref", "pk")
        .values_list("pk", "customer__external_ref")[:500]
    )
    story = [
        (
            "Template",
            f"{campaign.template_version.template.code} v{campaign.template_version.number}",
        ),
        ("Template content SHA-256", campaign.template_version.content_hash),
        ("Category", campaign.category),
        (
            "Segment",
            f"{snapshot.get('name', '')} v{snapshot.get('version', '')}",
        ),
        (
            "Segment definition",
            json.dumps(campaign.segment_snapshot.get("definition", {}), sort_keys=True),
        ),
        ("Audience", f"{campaign.audience_count} customers"),
        ("Audience SHA-256", campaign.audience_hash),
        ("Requested by", f"{campaign.submitted_by or ''} at {_iso(campaign.submitted_at)}"),
        (
            "Approved by",
            f"{approver} at {_iso(campaign.approved_at)}",
        ),
        ("Started", _iso(campaign.started_at)),
        ("Completed", _iso(campaign.completed_at)),
        ("State", campaign.state),
        ("Recipients", ", ".join(f"{s}: {n}" for s, n in sorted(states.items()))),
    ]
    html = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Evidence: {escape(campaign.name)}</title><style>{REPORT_CSS}</style></head><body>"
        f"<h1>Campaign evidence: {escape(campaign.name)}</h1><table>"
        + "".join(
            f"<tr><th>{escape(k)}</th><td><code>{escape(str(v))}</code></td></tr>" for k, v in story
        )
        + "</table><h2>Outcome per channel</h2>"
        + f"<table><tr><th>Channel</th><th>Deliveries</th></tr>{rows}</table>{graph}"
        + f"<h2>Not sent, with the reason</h2><table>{skipped}</table>"
        + "<h2>Audit-chain events</h2><table>"
        + "".join(
            f"<tr><td>#{e.pk}</td><td>{escape(e.action)}</td><td>{escape(e.actor_label)}</td>"
            f"<td><code>{e.hash}</code></td></tr>"
            for e in events
        )
        + "</table></body></html>"
    )
    return weasyprint.HTML(string=html, url_fetcher=SafeURLFetcher()).write_pdf(
        pdf_identifier=hashlib.sha256(html.encode()).hexdigest()[:32].encode()
    )


def approved_content(campaign: Campaign) -> dict[str, bytes]:
    """The approved template version as the reviewer saw it: every channel rendered from its
    sample data (`content/print.pdf`, `content/email.html`, …)."""
    try:
        preview = template_preview(version=campaign.template_version)
    except CompositionError as exc:
        # The pack is still made: the reason the proof cannot be rendered is what it holds.
        return {"content/unrendered.txt": f"{exc}\n".encode()}
    files: dict[str, bytes] = {}
    if preview.pdf is not None:
        files["content/print.pdf"] = preview.pdf.data
    for channel in ("email", "sms", "push"):
        rendered = getattr(preview, channel)
        for part, text in sorted((rendered or {}).items()):
            if isinstance(text, str):
                suffix = "html" if part == "html" else "txt"
                files[f"content/{channel}.{part}.{suffix}"] = text.encode()
    return files


SIGNATURE_FORMAT = "ccm-campaign-evidence-v1"


def signed_report(campaign: Campaign, pdf: bytes, events: list[AuditEvent]) -> tuple[bytes, dict]:
    """The report with a PAdES signature (documents.signing) made at the campaign's completion
    (or, before it completes, at its latest audit event), so regenerating gives the same bytes;
    and what the manifest says about it. Unsigned, saying why, without a key and certificate."""
    if not signing.signing_available():
        return pdf, {"unsigned": "CCM_EVIDENCE_SIGNING_KEY/CCM_EVIDENCE_SIGNING_CERT are not set"}
    when = campaign.completed_at or (events[-1].created_at if events else campaign.created_at)
    signed_pdf = signing.pdf_sign(
        pdf, when=when, reason=f"Evidence of campaign {campaign.reference}", location="CCM"
    )
    check = signing.pdf_signature_check(signed_pdf)
    return signed_pdf, {
        "format": "PAdES (ETSI.CAdES.detached), RSA PKCS#1 v1.5 SHA-256",
        "signer": check.signer if check else "",
        "signed_at": _iso(when),
    }


def signature(manifest_bytes: bytes) -> bytes:
    """signature.json: an HMAC-SHA256 over manifest.json under the audit signing key (named by
    its key id, never shown), the key that signs the audit checkpoints. The manifest holds the
    SHA-256 of every other file, so the signature covers the whole pack."""
    key = settings.AUDIT_SIGNING_KEY
    body: dict = {"format": SIGNATURE_FORMAT, "signed": "manifest.json"}
    if key:
        body |= {
            "algorithm": "HMAC-SHA256",
            "key_id": key_id(key),
            "signature": hmac.new(key.encode(), manifest_bytes, hashlib.sha256).hexdigest(),
        }
    else:
        body["unsigned"] = "AUDIT_SIGNING_KEY is not set"
    return json.dumps(body, indent=2, sort_keys=True).encode()


@dataclass
class PackCheck:
    ok: bool
    problems: list[str]


def evidence_verify(pack: bytes) -> PackCheck:
    """Whether a pack is what CCM issued: every file's SHA-256 as the manifest says, no file
    added or missing, and the manifest's signature under a current or former signing key."""
    problems: list[str] = []
    try:
        with zipfile.ZipFile(io.BytesIO(pack)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return PackCheck(False, ["not a ZIP file"])
    try:
        listed = json.loads(files.pop("manifest.json"))["files"]
        signed = json.loads(files.pop("signature.json"))
    except (KeyError, ValueError):
        return PackCheck(False, ["manifest.json or signature.json is missing or unreadable"])
    for name in sorted(set(listed) | set(files)):
        if name not in files:
            problems.append(f"{name}: listed in the manifest but missing")
        elif name not in listed:
            problems.append(f"{name}: not listed in the manifest")
        elif hashlib.sha256(files[name]).hexdigest() != listed[name]:
            problems.append(f"{name}: changed (SHA-256 differs from the manifest)")
    with zipfile.ZipFile(io.BytesIO(pack)) as archive:
        manifest_bytes = archive.read("manifest.json")
    keys = {
        key_id(k): k for k in [settings.AUDIT_SIGNING_KEY, *settings.AUDIT_SIGNING_KEYS_OLD] if k
    }
    key = keys.get(signed.get("key_id", ""))
    if "signature" not in signed:
        problems.append("the pack is not signed: " + signed.get("unsigned", "no signature"))
    elif key is None:
        problems.append(f"signed with key {signed.get('key_id')!r}, which is not configured here")
    else:
        expected = hmac.new(key.encode(), manifest_bytes, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signed["signature"]):
            problems.append("the manifest's signature does not match: it was changed")
    if "report.pdf" in files:
        check = signing.pdf_signature_check(files["report.pdf"])
        if check is not None and not check.ok:
            problems.append(f"report.pdf: its PAdES signature does not verify ({check.summary})")
    return PackCheck(not problems, problems)


def evidence_pack(campaign: Campaign) -> bytes:
    """report.pdf, recipients.csv, the approved content per channel (content/), manifest.json
    (with the SHA-256 of every other file and the covering audit events) and signature.json."""
    campaign = Campaign.objects.select_related(
        "template_version__template", "submitted_by", "approval__decided_by"
    ).get(pk=campaign.pk)
    events = covering_events(campaign)
    states = Counter(
        dict(
            CampaignRecipient.objects.filter(campaign=campaign)
            .order_by()
            .values_list("state")
            .annotate(n=Count("pk"))
            .values_list("state", "n")
        )
    )
    report, report_signature = signed_report(campaign, report_pdf(campaign, states, events), events)
    files = {
        "recipients.csv": recipients_csv(campaign),
        "report.pdf": report,
        **approved_content(campaign),
    }
    files["manifest.json"] = manifest(campaign, files, report_signature=report_signature)
    files["signature.json"] = signature(files["manifest.json"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name])
    return buffer.getvalue()
