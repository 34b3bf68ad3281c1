"""Every composition — previews, proofs, the review page, the pipeline — runs in the render worker
under a time and a memory limit, and fails with the reason instead of holding a process."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pypdf
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from documents import services
from documents.bundle import write_folder
from tests.documents.factories import TemplateFactory, letter_bundle
from tests.notifications.conftest import publish
from tests.timing import within

# Not refused by the sandbox (each step is small), but counting through 8 MB 900,000 times
# takes far longer than any limit.
SLOW = (
    "{% set s = 'ab' * 4000000 %}{% for i in range(1000) %}{% for j in range(900) %}"
    "{% if s.count('b') < 0 %}x{% endif %}{% endfor %}{% endfor %}"
)
# Thirty different 8 MB strings kept at once: 240 MB.
HUNGRY = (
    "{% set s = 'x' * 8000000 %}{% set ns = namespace(keep=[]) %}{% for i in range(30) %}"
    "{% set ns.keep = ns.keep + [s ~ i] %}{% endfor %}{{ ns.keep|length }}"
)


@pytest.fixture(autouse=True)
def _small_limits(settings):
    settings.CCM_COMPOSE_TIMEOUT_S = 1
    settings.CCM_COMPOSE_MEMORY_MB = 64


def _bundle(sms: str):
    bundle = letter_bundle()
    bundle.files["sms.txt"] = sms
    return bundle


@pytest.fixture
def api(db):
    issued = api_key_create(name="portal", scopes=["templates:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


@pytest.mark.parametrize(
    ("sms", "reason"),
    [
        (SLOW, "composition exceeded 1 s, the time limit for one rendition"),
        (HUNGRY, "composition exceeded 64 MB, the memory limit for one rendition"),
    ],
)
def test_preview_api_answers_422_with_the_limit_an_sms_exceeded(api, author, reviewer, sms, reason):
    # given a published template whose SMS needs more than the limits
    publish(_bundle(sms), author=author, reviewer=reviewer)
    # when an integrator previews it
    with within(30):
        response = api.post(
            "/api/v1/templates/letter/preview", {"channels": ["sms"]}, format="json"
        )
    # then a problem with the reason, not a hung request
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"].startswith(reason)
    # and the next preview is composed as usual
    fine = api.post("/api/v1/templates/letter/preview", {"channels": ["email"]}, format="json")
    assert fine.status_code == 200
    assert fine.json()["email"]["subject"] == "Your balance, Ada Lovelace"


def test_review_page_shows_the_time_limit_instead_of_hanging(author, reviewer, client):
    # given a version submitted for sign-off whose SMS never finishes
    version = services.template_version_create(
        template=TemplateFactory(), bundle=_bundle(SLOW), by=author
    )
    approval = services.template_version_submit(version=version, by=author)
    # when the reviewer opens the sign-off page
    client.force_login(reviewer)
    with within(30):
        response = client.get(f"/review/{approval.pk}/")
    # then the page is there, with the reason in place of the renditions
    assert response.status_code == 200
    assert "composition exceeded 1 s, the time limit for one rendition" in response.content.decode()


def test_template_proof_exits_non_zero_with_the_reason(author, tmp_path):
    services.template_version_create(template=TemplateFactory(), bundle=_bundle(SLOW), by=author)
    with within(60), pytest.raises(CommandError) as excinfo:
        call_command("template_proof", "letter", "--out", str(tmp_path / "proof.pdf"))
    assert "composition exceeded 1 s" in str(excinfo.value)
    assert not (tmp_path / "proof.pdf").exists()


def test_import_refuses_a_template_whose_sample_exceeds_the_limits(author, tmp_path):
    # given a library with one template whose SMS never finishes
    library = tmp_path / "library"
    write_folder(_bundle(SLOW), library / "letter")
    # when it is imported
    with within(60), pytest.raises(CommandError) as excinfo:
        call_command("templates_import", str(library), "--as", author.username)
    # then the command fails, naming the sample and the limit, and nothing is created
    assert "1 template folder(s) could not be imported" in str(excinfo.value)
    (result,) = services.templates_import(folder=library, by=author)
    assert result.outcome == "invalid"
    assert result.reason == (
        "samples/default.json (en) does not compose: "
        "composition exceeded 1 s, the time limit for one rendition"
    )
    assert not services.Template.objects.exists()


def test_the_cpu_cap_stops_a_process_that_spins():
    # The wall-clock limit normally ends a job first; the CPU cap is the worker's own backstop.
    spin = "from documents.sandbox import _set_cpu_cap\n_set_cpu_cap(0)\nwhile True:\n    pass\n"
    result = subprocess.run(
        [sys.executable, "-c", spin],
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGXCPU


def test_a_render_left_waiting_does_not_hand_its_reply_to_the_next_one():
    # A task's time-out (django-q's alarm) can raise into a render while it waits for the
    # worker's reply; that reply must not be read later as the next render's.
    from documents import sandbox
    from documents.composition import Sources
    from documents.rendering import Limits

    sandbox.start_worker()
    long = Sources(print_html="<h1>first</h1>" + "<p>lorem ipsum dolor sit amet</p>" * 3000)

    class Alarm(Exception):
        pass

    def ring(*_):
        raise Alarm

    previous = signal.signal(signal.SIGALRM, ring)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Alarm):
            sandbox.render_pdf(sources=long, locale="en_GB", data={}, limits=Limits())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    second = sandbox.render_pdf(
        sources=Sources(print_html="<h1>second</h1>"),
        locale="en_GB",
        data={},
        watermark=None,
        limits=Limits(),
    )
    assert second.page_count == 1
    assert "second" in pypdf.PdfReader(io.BytesIO(second.data)).pages[0].extract_text()


def test_a_worker_start_interrupted_leaves_no_process_behind():
    # The alarm can also ring while a new worker is starting, before anybody holds the process.
    from documents import sandbox

    sandbox.shutdown_workers()
    spawned: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        spawned.append(process)
        return process

    class Alarm(Exception):
        pass

    def ring(*_args, **_kwargs):
        raise Alarm  # what django-q's time-out raises into the wait for the "ready" frame

    with (
        mock.patch.object(sandbox.subprocess, "Popen", recording_popen),
        mock.patch.object(sandbox, "_read_frame", ring),
        pytest.raises(Alarm),
    ):
        sandbox.start_worker()
    assert len(spawned) == 1
    assert spawned[0].poll() is not None, "the half-started worker is still running"
    assert sandbox.worker_pids() == []
