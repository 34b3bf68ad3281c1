"""Template authors in the browser editor (documents/web.py, documents/authoring.py): the same
files give the same stored version as an import from git; problems are shown at their line;
every channel is previewed from the sample; submitting, the decision's notice and publishing."""

from __future__ import annotations

import io
import re

import pytest
from django.core import mail
from pypdf import PdfReader

from ccm import approvals
from ccm.models import Notice
from documents import authoring, services
from documents import bundle as bundles
from documents.models import Template, TemplateVersion
from tests.documents.factories import letter_bundle
from tests.notifications import conftest as notifications_fixtures

sync_tasks = notifications_fixtures.sync_tasks


def editor_post(files: dict[str, str], **extra) -> dict[str, str]:
    # A browser posts a textarea's text with CRLF line endings.
    return {
        **{f"file:{rel}": text.replace("\n", "\r\n") for rel, text in files.items()},
        **extra,
    }


def folder_texts(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def draft_v1(author):
    return authoring.template_start(
        code="letter",
        name="Balance letter",
        category="transactional",
        channels=["print", "email", "sms"],
        by=author,
    )


def test_the_editor_and_an_import_from_git_store_the_same_version(author, client, tmp_path):
    # given a template folder as it is kept in git
    library = tmp_path / "library"
    bundles.write_folder(letter_bundle(), library / "letter")
    # when an author creates the template in the browser and types the same files in
    client.force_login(author)
    response = client.post(
        "/templates/new/",
        {
            "name": "Balance letter",
            "code": "letter",
            "category": "transactional",
            "channels": ["print", "email", "sms"],
        },
    )
    version = TemplateVersion.objects.get(template__code="letter")
    assert response["Location"] == f"/templates/versions/{version.pk}/"
    texts = folder_texts(library / "letter")
    saved = client.post(f"/templates/versions/{version.pk}/", editor_post(texts, action="save"))
    assert saved.status_code == 302, saved.content.decode()
    # then the stored version is the one an import of the folder builds, hash and all
    version.refresh_from_db()
    from_git = bundles.read_folder(library / "letter").to_content()
    assert version.content == from_git
    assert version.content_hash == bundles.content_hash(from_git)
    # and importing the folder finds nothing new to store
    (result,) = services.templates_import(folder=library, by=author)
    assert (result.outcome, result.version) == ("unchanged", 1)


def test_a_jinja_error_is_shown_at_its_line_and_nothing_is_saved(author, client, draft_v1):
    client.force_login(author)
    files = authoring.editor_files(services.version_bundle(draft_v1))
    files["print.html"] = "<h1>Dear {{ customer.name }}</h1>\n<p>Hello</p>\n{% if %}\n"
    response = client.post(f"/templates/versions/{draft_v1.pk}/", editor_post(files, action="save"))
    assert response.status_code == 422
    page = response.content.decode()
    assert "print.html, line 3</a>" in page
    # the line number beside the editor's line 3 is marked, and the message is under the box
    assert re.search(r'<span class="bad" title="[^"]*" data-line="3">! 3</span>', page)
    assert "Line 3: print.html line 3:" in page
    draft_v1.refresh_from_db()
    assert "{% if %}" not in draft_v1.content["files"]["print.html"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        # a partial's runtime error is shown in the partial, at its line
        (
            {"partials/footer.html": "<p>Bank</p>\n<p>{{ nothing_here }}</p>\n"},
            ("partials/footer.html", 2),
        ),
        # the email subject's file is email.subject.txt
        ({"email.subject.txt": "{{ customer.name | nope }}\n"}, ("email.subject.txt", 1)),
        # JSON that does not parse, at its line
        ({"schema.json": '{\n  "type": "object",\n  "properties": {,}\n}\n'}, ("schema.json", 3)),
        # a sample that does not match the schema: at the field's line in the sample
        (
            {
                "samples/default.json": (
                    '{\n  "customer": {"name": "Ada"},\n  "balance": "lots",\n'
                    '  "as_of": "2026-03-01"\n}\n'
                )
            },
            ("samples/default.json", 3),
        ),
    ],
)
def test_problems_are_placed_at_their_file_and_line(author, client, change, where):
    template = Template.objects.create(code="letter", name="Balance letter", category="service")
    draft = services.template_version_create(template=template, bundle=letter_bundle(), by=author)
    client.force_login(author)
    files = authoring.editor_files(services.version_bundle(draft))
    if "partials/footer.html" in change:
        files["print.html"] = '<h1>Hi</h1>\n{% include "footer.html" %}\n'
    files.update(change)
    response = client.post(f"/templates/versions/{draft.pk}/", editor_post(files, action="preview"))
    assert response.status_code == 422
    problems = response.context["problems"]
    assert (problems[0].file, problems[0].line) == where, problems


def test_preview_composes_every_channel_from_the_sample_without_saving(author, client, draft_v1):
    client.force_login(author)
    files = authoring.editor_files(services.version_bundle(draft_v1))
    files["print.html"] = "<h1>Dear {{ customer.name }}</h1>\n<p>Unsaved wording</p>\n"
    response = client.post(
        f"/templates/versions/{draft_v1.pk}/", editor_post(files, action="preview")
    )
    assert response.status_code == 200
    preview = response.context["preview"]
    assert preview["email"]["subject"] == "A message for Ada Lovelace"
    assert "Ada Lovelace" in preview["sms"]["text"]
    pdf = client.get(f"/templates/preview/{preview['token']}/proof.pdf")
    assert pdf["Content-Type"] == "application/pdf"
    text = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    assert "Unsaved wording" in text
    assert "PROOF" in text
    email = client.get(f"/templates/preview/{preview['token']}/email.html")
    assert "Write the email here" in email.content.decode()
    assert email["Content-Security-Policy"].startswith("default-src 'none'")
    # nothing was stored, and another person cannot fetch the kept preview
    draft_v1.refresh_from_db()
    assert "Unsaved wording" not in draft_v1.content["files"]["print.html"]
    client.force_login(type(author).objects.create_user("other", is_staff=True))
    assert client.get(f"/templates/preview/{preview['token']}/proof.pdf").status_code in {403, 404}


def test_submit_decision_notice_mail_and_publish_after_confirming(
    author, reviewer, client, draft_v1, sync_tasks
):
    # given the author submits the saved draft
    author.email = "alex@example.org"
    author.save()
    client.force_login(author)
    response = client.post(f"/templates/versions/{draft_v1.pk}/submit/")
    assert response.status_code == 302
    draft_v1.refresh_from_db()
    assert draft_v1.state == "in_review"
    # when a reviewer approves it
    mail.outbox.clear()
    approval = approvals.pending_for(draft_v1)
    sync_tasks(
        approvals.approval_decide,
        approval=approval,
        by=reviewer,
        decision="approve",
        comment="Fine.",
    )
    # then the author has a notice in the app (counted in the navigation) and a mail
    notice = Notice.objects.get(user=author)
    assert notice.title == "Approved: Balance letter v1 (letter)"
    assert "Comment: Fine." in notice.body
    assert "You can publish it now." in notice.body
    assert notice.url == "/templates/letter/"
    (sent,) = mail.outbox
    assert (sent.to, sent.subject) == (["alex@example.org"], notice.title)
    assert "/templates/letter/" in sent.body
    home = client.get("/").content.decode()
    assert '<span class="badge">1<span class="visually-hidden"> unread</span>' in home
    # and publishing asks first: a GET or an unconfirmed POST publishes nothing
    assert (
        "cannot be undone"
        in client.get(f"/templates/versions/{draft_v1.pk}/publish/").content.decode()
    )
    client.post(f"/templates/versions/{draft_v1.pk}/publish/")
    draft_v1.refresh_from_db()
    assert draft_v1.state == "approved"
    client.post(f"/templates/versions/{draft_v1.pk}/publish/", {"confirm": "yes"})
    draft_v1.refresh_from_db()
    assert draft_v1.state == "published"


def test_submit_refuses_a_draft_whose_sample_does_not_compose(author, client, draft_v1):
    bundle = services.version_bundle(draft_v1)
    files = dict(bundle.files, **{"sms.txt": "{{ customer.nickname }}"})
    TemplateVersion.objects.filter(pk=draft_v1.pk).update(
        content=bundles.Bundle(bundle.meta, bundle.schema, bundle.samples, files, {}).to_content()
    )
    draft_v1.refresh_from_db()
    TemplateVersion.objects.filter(pk=draft_v1.pk).update(
        content_hash=bundles.content_hash(draft_v1.content)
    )
    client.force_login(author)
    response = client.post(f"/templates/versions/{draft_v1.pk}/submit/", follow=True)
    assert "Not submitted: samples/default.json (en) does not compose" in response.content.decode()
    draft_v1.refresh_from_db()
    assert draft_v1.state == "draft"


def test_a_new_draft_starts_from_the_published_version(author, client, published):
    client.force_login(author)
    response = client.post(f"/templates/{published.template.code}/draft/")
    draft = TemplateVersion.objects.get(template=published.template, state="draft")
    assert response["Location"] == f"/templates/versions/{draft.pk}/"
    assert (draft.number, draft.content_hash) == (published.number + 1, published.content_hash)
    # a second click goes to the same draft rather than making another
    client.post(f"/templates/{published.template.code}/draft/")
    assert TemplateVersion.objects.filter(template=published.template, state="draft").count() == 1


def test_frozen_versions_are_read_only_and_reviewers_cannot_edit(
    author, reviewer, client, published
):
    client.force_login(author)
    page = client.get(f"/templates/versions/{published.pk}/").content.decode()
    assert "its content is frozen" in page
    assert "readonly" in page
    assert (
        client.post(f"/templates/versions/{published.pk}/", {"action": "save"}).status_code == 403
    )
    client.force_login(reviewer)
    assert client.get("/templates/new/").status_code == 403


def test_locate_maps_sandbox_names_to_the_files_of_the_language_previewed():
    files = {"print.html": "", "lang/de/print.html": "", "push.title.txt": ""}
    assert authoring.locate("print.html line 4: boom", files=files, language="de") == (
        authoring.Problem("lang/de/print.html", 4, "print.html line 4: boom")
    )
    assert authoring.locate("push.title line 1: x", files=files).file == "push.title.txt"
    assert authoring.locate("static:terms line 2: x", files=files).file == "static/terms.html"
    assert authoring.locate("channel sms needs sms.txt", files=files) == authoring.Problem(
        "sms.txt", None, "channel sms needs sms.txt"
    )
