"""`make run`'s demo data shows every channel: what seed_demo requests goes out by email, SMS,
push and print through the development backends, and the print batch can be closed."""

from __future__ import annotations

import pypdf
from django.core import mail

from ccm.demo import seed_all
from notifications.channels import printing, push, sms
from notifications.models import Delivery, PrintBatch


def test_demo_sends_on_every_channel_and_the_print_batch_closes(
    settings, sync_tasks, admin_user, tmp_path
):
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]

    # when the demo is seeded and its tasks run
    sync_tasks(seed_all)

    # then every channel carried something
    sent = Delivery.objects.filter(state="sent")
    assert set(sent.values_list("channel", flat=True)) == {"email", "sms", "push", "print"}
    assert mail.outbox
    assert sms.outbox
    assert push.outbox
    # and the letter for the customer with only a postal address waits in the open batch
    batch = PrintBatch.objects.get(state="open")
    names = set(batch.items.values_list("recipient_name", flat=True))
    assert "Mrs Priya Raman" in names

    # when operations close the batch, there is one print stream to download
    printing.print_batch_close(batch=batch, by=admin_user)
    batch.refresh_from_db()
    with batch.stream.open("rb") as fh:
        stream = pypdf.PdfReader(fh)
        assert len(stream.pages) == batch.page_count
        assert any("Priya Raman" in page.extract_text() for page in stream.pages)
    assert batch.manifest.size > 0
