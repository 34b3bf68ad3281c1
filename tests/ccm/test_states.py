from __future__ import annotations

import pytest
from django.template import Context, Template

from ccm.models import ApprovalState
from ccm.states import state_label


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("in_review", "In review"),
        ("changes_requested", "Changes requested"),
        ("awaiting_approval", "Awaiting approval"),
        (ApprovalState.PENDING, "Pending"),
        ("", "—"),
        (None, "—"),
    ],
)
def test_a_state_reads_as_words(value, words):
    assert state_label(value) == words


def test_every_template_has_the_state_filter_without_loading_it():
    rendered = Template("{{ s|state }}, {{ s|state|lower }}").render(Context({"s": "in_review"}))
    assert rendered == "In review, in review"
