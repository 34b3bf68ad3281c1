"""Documents, print streams, reprints and case attachments on S3-API object storage: a real
S3 server (moto's server mode) on loopback, with the settings STORAGE_BACKEND=s3 produces."""

from __future__ import annotations

import hashlib

from django.core import mail
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from cases import services
from cases.requests import reprints
from tests import s3
from tests.cases import reprint_fixtures
from tests.cases.conftest import COMPLAINT_DETAILS
from tests.cases.reprint_fixtures import pdf_text

original = reprint_fixtures.original
s3_server = s3.s3_server
s3_storage_settings = s3.s3_storage_settings
s3_storage = s3.s3_storage


def assert_private(server: s3.S3Server, bucket: str, name: str) -> None:
    acl = server.client().get_object_acl(Bucket=bucket, Key=name)
    grantees = [g["Grantee"].get("URI", "") for g in acl["Grants"]]
    assert not any("AllUsers" in g or "AuthenticatedUsers" in g for g in grantees)


def test_the_settings_make_private_encrypted_objects(s3_storage_settings):
    options = s3_storage_settings["OPTIONS"]
    assert s3_storage_settings["BACKEND"] == "storages.backends.s3.S3Storage"
    assert options["object_parameters"] == {"ServerSideEncryption": "AES256"}
    assert (options["default_acl"], options["querystring_auth"]) == (None, True)
    assert options["file_overwrite"] is False


def test_an_archived_document_is_an_encrypted_private_object_reprinted_with_its_hash_proven(
    s3_storage, original, customer, agent, sync_tasks
):
    server, bucket = s3_storage
    document = original.document
    # then the archived PDF is in the bucket, byte for byte, encrypted at rest and private
    body, head = s3.stored_object(server, bucket, document.file.name)
    assert hashlib.sha256(body).hexdigest() == document.sha256
    assert head["ServerSideEncryption"] == "AES256"
    assert_private(server, bucket, document.file.name)
    # when an agent files a reprint: CCM reads the archived document back from the bucket,
    # regenerates it and proves the hash before sending a duplicate
    mail.outbox.clear()
    reprint = sync_tasks(
        reprints.reprint_request_create,
        customer=customer,
        document=document,
        by=agent,
        reason="Lost in the post",
        channel="email",
        identity_verification="security_questions",
    )
    reprint.refresh_from_db()
    assert reprint.state == "fulfilled"
    check = reprint.regeneration_check
    assert check.matched
    assert check.expected_sha256 == check.actual_sha256 == document.sha256
    # the duplicate is its own object in the bucket, stamped, with the hash recorded
    duplicate = reprint.duplicate
    dup_body, dup_head = s3.stored_object(server, bucket, duplicate.file.name)
    assert hashlib.sha256(dup_body).hexdigest() == duplicate.sha256
    assert dup_head["ServerSideEncryption"] == "AES256"
    assert "DUPLICATE" in pdf_text(dup_body)
    assert mail.outbox[-1].attachments[0][1] == dup_body


def test_a_case_attachment_is_stored_and_downloaded_through_ccm(
    s3_storage, client, customer, agent, reviewer
):
    server, bucket = s3_storage
    case = services.case_open(
        case_type="complaint",
        subject="Late",
        customer=customer,
        details=COMPLAINT_DETAILS,
        assignee=agent,
        by=agent,
    )
    content = b"%PDF-1.4\n% a scanned claim form\n%%EOF\n"
    attachment = services.case_attachment_add(
        case=case, file=ContentFile(content, name="claim.pdf"), by=agent
    )
    body, head = s3.stored_object(server, bucket, attachment.file.name)
    assert (body, head["ServerSideEncryption"]) == (content, "AES256")
    # the download streams the object through CCM's permission check; no bucket URL leaks
    client.force_login(agent)
    url = reverse("cases-attachment", args=[case.reference, attachment.pk])
    got = client.get(url)
    assert got.status_code == 200
    assert b"".join(got.streaming_content) == content
    assert bucket not in got.get("Location", "")
    client.force_login(reviewer)
    assert client.get(url).status_code == 403


def test_an_existing_name_is_never_overwritten(s3_storage):
    first = default_storage.save("documents/same.pdf", ContentFile(b"first"))
    second = default_storage.save("documents/same.pdf", ContentFile(b"second"))
    assert first != second
    with default_storage.open(first) as fh:
        assert fh.read() == b"first"
