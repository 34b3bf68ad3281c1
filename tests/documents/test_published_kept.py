"""The published versions a process keeps (an API request takes its template from memory):
read again as soon as any template or version changes, here or in another process."""

from __future__ import annotations

from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ccm import generations
from documents import selectors
from documents.models import TemplateVersion, VersionState


def test_a_kept_version_is_read_again_when_another_process_changes_the_templates(published):
    code = published.template.code
    selectors.versions_for_sending(codes=[code])
    # given a change made by another process (no signal here), which moves the generation on
    TemplateVersion.objects.filter(pk=published.pk).update(state=VersionState.RETIRED)
    with CaptureQueriesContext(connection) as queries:
        kept = selectors.versions_for_sending(codes=[code])
    assert kept[code].pk == published.pk  # kept: nothing said it changed
    assert not [q for q in queries if '"documents_template' in q["sql"]]

    # when that process's change commits and bumps the generation
    cache.set(generations.TEMPLATES, "another process's change")

    # then the next read sees it: nothing published
    assert selectors.versions_for_sending(codes=[code]) == {}


def test_a_change_saved_here_is_seen_by_the_next_read(published):
    code = published.template.code
    assert selectors.versions_for_sending(codes=[code])[code].template.category != "marketing"

    # when the template's default category changes (as publishing a version changes it)
    template = published.template
    template.category = "marketing"
    template.save()

    # then new communications take the new one
    assert selectors.versions_for_sending(codes=[code])[code].template.category == "marketing"
