"""Print streams on S3-API object storage (a real S3 server on loopback, moto's server mode)."""

from __future__ import annotations

import hashlib

from notifications.channels import printing
from notifications.models import PrintBatch
from tests import s3
from tests.cases.reprint_fixtures import pdf_text
from tests.notifications import test_print

s3_server = s3.s3_server
s3_storage_settings = s3.s3_storage_settings
s3_storage = s3.s3_storage
postal_customers = test_print.postal_customers
letters = test_print.letters


def test_a_print_stream_and_manifest_are_written_to_the_bucket(s3_storage, letters, ops):
    server, bucket = s3_storage
    batch = PrintBatch.objects.get(state="open")
    # when
    printing.print_batch_close(batch=batch, by=ops)
    # then the stream read back from the bucket holds every letter and matches its hash
    batch.refresh_from_db()
    body, head = s3.stored_object(server, bucket, batch.stream.name)
    assert hashlib.sha256(body).hexdigest() == batch.stream_sha256
    assert head["ServerSideEncryption"] == "AES256"
    assert "Dear Ada Lovelace" in pdf_text(body)
    manifest, _ = s3.stored_object(server, bucket, batch.manifest.name)
    assert hashlib.sha256(manifest).hexdigest() == batch.manifest_sha256
