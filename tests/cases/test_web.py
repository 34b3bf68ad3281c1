"""The agent and operations case screens, server-side: queues with their SLA indicators on a
frozen clock, the case page and its timeline, every action as a POST, refusals on the page
(never a 500), who may open what, attachments' limits, and the two recoveries."""

from __future__ import annotations

import html as html_lib
import re

import pytest
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from freezegun import freeze_time

from cases import services
from cases.models import Case, CaseAttachment
from cases.requests import data_form as web_data_form
from cases.web import queues
from ccm.models import AuditEvent
from ccm.roles import Role
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.customers import services as customer_services
from notifications.models import Communication
from tests.cases.conftest import COMPLAINT_DETAILS, DATA, request

PDF = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def open_complaint(customer, by, **kwargs) -> Case:
    return services.case_open(
        case_type="complaint",
        subject=kwargs.pop("subject", "Claim settled late"),
        customer=customer,
        details=COMPLAINT_DETAILS,
        by=by,
        **kwargs,
    )


def signed_in(client, user):
    client.force_login(user)
    return client


def text(response) -> str:
    """The page's words, tags dropped and spaces collapsed: what a reader sees."""
    html = response.content.decode()
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip())


def rows(response) -> list[str]:
    """The text of each body row of the page's first table."""
    html = response.content.decode()
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [
        html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip())
        for row in re.findall(r"<tr\b[^>]*>(.*?)</tr>", body, flags=re.S)
    ]


def detail_url(case: Case) -> str:
    return reverse("cases-detail", args=[case.reference])


def action_url(case: Case, action: str) -> str:
    return reverse("cases-action", args=[case.reference, action])


# --- the queue -------------------------------------------------------------------------------


def test_queue_tabs_show_my_cases_unassigned_and_each_team(client, customer, agent, make_user):
    # given a case of mine, an unassigned one, a colleague's, and a dispute for the other team
    colleague = make_user("carla", Role.SERVICE_AGENT)
    mine_case = open_complaint(customer, agent, subject="Mine", assignee=agent)
    open_complaint(customer, agent, subject="Nobody's yet")
    open_complaint(customer, agent, subject="Carla's", assignee=colleague)
    services.case_open(case_type="dispute", subject="Card dispute", customer=customer, by=agent)
    signed_in(client, agent)
    # when / then: my cases is the default tab
    mine = client.get(reverse("cases-queue"))
    assert mine.status_code == 200
    [row] = rows(mine)
    assert row.startswith(f"{mine_case.reference} Mine")
    assert 'aria-current="page">My cases' in mine.content.decode()
    unassigned = client.get(reverse("cases-queue"), {"queue": "unassigned"})
    assert sorted(r.split(" ", 1)[1].split(" Ada")[0] for r in rows(unassigned)) == [
        "Card dispute",
        "Nobody's yet",
    ]
    team = client.get(reverse("cases-queue"), {"queue": "customer_relations"})
    assert len(rows(team)) == 3
    assert "Card dispute" not in text(team)
    disputes = client.get(reverse("cases-queue"), {"queue": "disputes"})
    assert [("Card dispute" in r) for r in rows(disputes)] == [True]
    # and each tab says how many it holds
    page = text(team)
    assert "My cases (1)" in page
    assert "Unassigned (2)" in page
    assert "Customer relations (3)" in page
    assert "Disputes (1)" in page


def test_a_tab_over_its_cap_says_so_and_all_tabs_cost_one_query(
    client, customer, agent, monkeypatch, django_assert_max_num_queries
):
    # given a team with more open cases than a tab counts (the cap lowered to 2 here)
    monkeypatch.setattr(queues, "TAB_COUNT_CAP", 2)
    for n in range(3):
        open_complaint(customer, agent, subject=f"Complaint {n}")
    signed_in(client, agent)
    # when the agent opens the queue
    page = text(client.get(reverse("cases-queue"), {"queue": "customer_relations"}))
    # then the tab reads "2+" rather than a count that would read the whole team
    assert "Customer relations (2+)" in page
    assert "Disputes (0)" in page
    # and every tab's count is one statement
    with django_assert_max_num_queries(1):
        queues.queue_counts(user=agent)


def test_queue_without_resolved_cases_unless_asked(client, customer, agent):
    case = open_complaint(customer, agent, assignee=agent)
    services.case_start(case=case, by=agent)
    services.case_resolve(case=case, by=agent, resolution="Apologised and refunded.")
    signed_in(client, agent)
    assert "No cases here." in text(client.get(reverse("cases-queue")))
    resolved = client.get(reverse("cases-queue"), {"state": "resolved"})
    assert case.reference in text(resolved)


def test_queue_refuses_an_unknown_filter_with_a_message(client, agent):
    response = signed_in(client, agent).get(reverse("cases-queue"), {"queue": "everyone"})
    assert response.status_code == 400
    assert "There is no queue 'everyone'; choose one from the page." in text(response)


def test_sla_indicators_on_a_frozen_clock(client, customer, agent, make_user):
    # given complaints received on Friday 1 May 2026 (Monday 4 May is a bank holiday): the
    # acknowledgement is due on Wednesday 6 May
    with freeze_time("2026-05-01 09:00:00"):
        early = open_complaint(customer, agent, subject="Early", assignee=agent)
        waiting = open_complaint(customer, agent, subject="Paused", assignee=agent)
        services.case_start(case=waiting, by=agent)
        services.case_wait(case=waiting, by=agent, reason="Claim form from the customer")
    signed_in(client, agent)
    # on the day: two business days left (Tuesday and Wednesday), on track
    with freeze_time("2026-05-01 15:00:00"):
        by_subject = {r.split(" ")[1]: r for r in rows(client.get(reverse("cases-queue")))}
    assert "2 business days left" in by_subject["Early"]
    assert "Acknowledgement due Wed 6 May 2026" in by_subject["Early"]
    assert "Clock stopped: waiting on the customer" in by_subject["Paused"]
    assert "moves when work resumes" in by_subject["Paused"]
    # Tuesday: one business day left, flagged as approaching in words and in colour
    with freeze_time("2026-05-05 10:00:00"):
        response = client.get(reverse("cases-queue"))
    assert "Approaching: 1 business day left" in rows(response)[0]
    assert 'class="sla sla-approaching"' in response.content.decode()
    # Thursday: past Wednesday's deadline, overdue; the paused case still is not
    with freeze_time("2026-05-07 10:00:00"):
        response = client.get(reverse("cases-queue"))
        by_subject = {r.split(" ")[1]: r for r in rows(response)}
    assert "Overdue by 1 business day" in by_subject["Early"]
    assert 'class="sla sla-overdue"' in response.content.decode()
    assert "Clock stopped" in by_subject["Paused"]
    assert early.reference in by_subject["Early"]


def test_queue_sorts_by_deadline_or_priority_and_paginates(client, customer, agent):
    with freeze_time("2026-05-01 09:00:00"):
        late_but_urgent = open_complaint(
            customer, agent, subject="Urgent", assignee=agent, priority="urgent"
        )
    with freeze_time("2026-04-20 09:00:00"):
        sooner = open_complaint(customer, agent, subject="Sooner", assignee=agent, priority="low")
    signed_in(client, agent)
    with freeze_time("2026-04-21 09:00:00"):
        by_deadline = rows(client.get(reverse("cases-queue")))
        by_priority = rows(client.get(reverse("cases-queue"), {"sort": "priority"}))
    assert [r.split(" ")[0] for r in by_deadline] == [sooner.reference, late_but_urgent.reference]
    assert [r.split(" ")[0] for r in by_priority] == [late_but_urgent.reference, sooner.reference]
    # 26 cases make two pages of 25
    for n in range(24):
        open_complaint(customer, agent, subject=f"More {n}", assignee=agent)
    first = client.get(reverse("cases-queue"))
    assert len(rows(first)) == 25
    assert "Page 1 of 2" in text(first)
    assert len(rows(client.get(reverse("cases-queue"), {"page": 2}))) == 1


# --- the case page ---------------------------------------------------------------------------


@pytest.fixture
def complaint(customer, agent, library) -> Case:
    return services.case_start(case=open_complaint(customer, agent, assignee=agent), by=agent)


def test_case_page_shows_milestones_letters_notes_and_the_whole_timeline(
    client, complaint, agent, sync_tasks
):
    # given the acknowledgement was reached (its letter sent) and a note added through the page
    signed_in(client, agent)
    reach = reverse("cases-milestone-reach", args=[complaint.reference, "acknowledgement"])
    response = sync_tasks(client.post, reach, {})
    assert response.status_code == 302
    response = client.post(
        reverse("cases-note-add", args=[complaint.reference]),
        {"note-body": "Customer called back, happy with the letter."},
    )
    assert response.status_code == 302
    # when
    page = client.get(detail_url(complaint))
    # then
    assert page.status_code == 200
    letter = Communication.objects.get(template__code="complaint_acknowledgement")
    words = text(page)
    timeline = words.split("Timeline", 1)[1].split("Notes", 1)[0]
    for said in (
        "Acknowledgement reached (on time); letter Complaint acknowledgement requested",
        f"Complaint acknowledgement (communication {letter.pk}): sent",
        f"Complaint acknowledgement (communication {letter.pk}): composed",
        "Note: Customer called back, happy with the letter.",
        "Work started",
        "Assigned to agnes",
        "Case opened",
    ):
        assert said in timeline, said
    # newest first
    assert timeline.index("Note: Customer called back") < timeline.index("Case opened")
    html = page.content.decode()
    assert reverse("admin:notifications_communication_change", args=[letter.pk]) in html
    assert reverse("api-document-pdf", args=[letter.document.public_id]) in html
    # the PDF link serves the letter to the agent's session
    pdf = client.get(reverse("api-document-pdf", args=[letter.document.public_id]))
    assert b"".join(pdf.streaming_content).startswith(b"%PDF")
    assert "Customer called back, happy with the letter." in words.split("Notes", 1)[1]


def test_only_the_moves_the_state_allows_are_buttons(client, complaint, agent):
    html = signed_in(client, agent).get(detail_url(complaint)).content.decode()
    for shown in ("wait", "resolve", "assign"):
        assert action_url(complaint, shown) in html
    for hidden in ("start", "resume", "close", "reopen", "assign_me"):
        assert action_url(complaint, hidden) not in html


def test_each_action_by_post_moves_the_case(client, customer, agent, make_user):
    colleague = make_user("carla", Role.SERVICE_AGENT)
    case = open_complaint(customer, agent)
    signed_in(client, agent)

    def post(action: str, **data) -> Case:
        response = client.post(action_url(case, action), data)
        assert response.status_code == 302, text(response)
        assert response.url == detail_url(case)
        return Case.objects.get(pk=case.pk)

    assert (post("assign_me").state, Case.objects.get(pk=case.pk).assignee) == ("assigned", agent)
    assert post("assign", **{"assign-assignee": colleague.pk}).assignee == colleague
    assert post("start").state == "in_progress"
    waiting = post("wait", **{"wait-reason": "Claim form"})
    assert (waiting.state, waiting.paused_at is not None) == ("waiting", True)
    resumed = post("resume")
    assert (resumed.state, resumed.paused_at) == ("in_progress", None)
    resolved = post("resolve", **{"resolve-resolution": "Refunded the excess."})
    assert (resolved.state, resolved.resolution) == ("resolved", "Refunded the excess.")
    assert post("reopen", **{"reopen-reason": "Customer disagrees"}).state == "in_progress"
    post("resolve", **{"resolve-resolution": "Explained the policy terms."})
    assert post("close").state == "closed"
    # each is in the audit log, by the agent
    actions = list(
        AuditEvent.objects.filter(action__startswith="case.", actor=agent).values_list(
            "action", flat=True
        )
    )
    for done in ("assigned", "started", "waiting", "resumed", "resolved", "reopened", "closed"):
        assert f"case.{done}" in actions
    # and the page says what happened
    assert f"{case.reference} closed." in text(client.get(detail_url(case)))


def test_a_move_the_state_does_not_allow_is_refused_on_the_page(client, complaint, agent):
    signed_in(client, agent)
    # when closing a case in progress
    response = client.post(action_url(complaint, "close"))
    # then the page says why and what is possible, and nothing changed
    assert response.status_code == 409
    assert (
        f"Nothing changed. Case {complaint.reference} is in_progress, so 'close' is not "
        "possible; possible now: assign, resolve, wait." in text(response)
    )
    assert '<div class="alert" role="alert"><p>Nothing changed.' in response.content.decode()
    assert Case.objects.get(pk=complaint.pk).state == "in_progress"
    # an unknown action is a 404, not a 500
    assert client.post(action_url(complaint, "explode")).status_code == 404


def test_a_move_without_what_it_needs_names_the_field(client, complaint, agent):
    signed_in(client, agent)
    response = client.post(action_url(complaint, "wait"), {"wait-reason": "  "})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_wait-reason_error">Say what the case is waiting for.' in html
    assert 'aria-describedby="id_wait-reason_error id_wait-reason_helptext"' in html
    assert 'aria-invalid="true"' in html
    assert Case.objects.get(pk=complaint.pk).state == "in_progress"


def test_assigning_to_someone_outside_the_team_is_refused(client, complaint, agent, ops):
    response = signed_in(client, agent).post(
        action_url(complaint, "assign"), {"assign-assignee": ops.pk}
    )
    assert response.status_code == 400
    assert "Choose someone from the list" in text(response)
    assert Case.objects.get(pk=complaint.pk).assignee == agent


def test_final_response_without_its_findings_names_what_the_letter_needs(client, complaint, agent):
    url = reverse("cases-milestone-reach", args=[complaint.reference, "final_response"])
    # given the letter's form, prefilled with what the case knows
    page = signed_in(client, agent).get(detail_url(complaint))
    form = page.context["milestones"][2]["form"]
    assert form["reference"].value() == complaint.reference
    assert form.fields["decision"].label == "Decision"
    assert form.fields["payment_note"].label.endswith("(optional)")
    # when it is sent without the decision and findings
    posted = {
        f"milestone-final_response-{k}": v
        for k, v in web_data_form.schema_initial(
            {"reference": complaint.reference, "document_date": "2026-05-01"}
        ).items()
    }
    response = client.post(url, posted)
    # then each is named at its field in words
    assert response.status_code == 400
    words = text(response)
    assert "Final response was not reached" in words
    assert "'decision' is a required property" not in words
    bound = response.context["milestones"][2]["form"]
    assert bound.errors["decision"] == ["Required: fill this in."]
    assert not complaint.milestones.get(code="final_response").reached_at
    assert bound.errors["findings"] == ["Required: fill this in."]
    # and the case's own facts were not asked again: they stood as the case supplies them
    assert "handler.name" not in bound.errors


# --- who may open what -----------------------------------------------------------------------


def test_roles_that_do_not_work_cases_get_403_and_strangers_the_login(
    client, complaint, reviewer, agent, author
):
    urls = [reverse("cases-queue"), detail_url(complaint), reverse("cases-exceptions")]
    for url in urls:
        assert client.get(url).status_code == 302  # to the login form
    signed_in(client, reviewer)
    for url in urls:
        response = client.get(url)
        assert response.status_code == 403
        assert "You may not open this page" in text(response)
    assert client.post(action_url(complaint, "resolve")).status_code == 403
    # agents work cases but do not handle exceptions
    signed_in(client, agent)
    assert client.get(reverse("cases-exceptions")).status_code == 403
    assert client.get(reverse("cases-regenerate", args=[complaint.reference])).status_code == 403
    assert Case.objects.get(pk=complaint.pk).state == "in_progress"


def test_home_links_with_counts(client, customer, agent, ops, compose_failed):
    open_complaint(customer, agent, assignee=agent)
    agent_home = text(signed_in(client, agent).get(reverse("home")))
    assert "My cases 1" in agent_home
    ops_home = signed_in(client, ops).get(reverse("home"))
    html = ops_home.content.decode()
    assert f'href="{reverse("cases-exceptions")}">Exceptions</a> <span class="badge"' in html
    assert "Exceptions 1" in text(ops_home)


# --- attachments -----------------------------------------------------------------------------


def upload(client, case: Case, name: str, content: bytes, content_type="application/pdf"):
    return client.post(
        reverse("cases-attachment-add", args=[case.reference]),
        {"attachment-file": SimpleUploadedFile(name, content, content_type=content_type)},
    )


def test_attachment_upload_and_staff_only_download(client, complaint, agent, reviewer):
    signed_in(client, agent)
    # when
    response = upload(client, complaint, "claim-form.pdf", PDF)
    # then
    assert response.status_code == 302
    attachment = CaseAttachment.objects.get(case=complaint)
    assert (attachment.name, attachment.content_type, attachment.size) == (
        "claim-form.pdf",
        "application/pdf",
        len(PDF),
    )
    page = client.get(detail_url(complaint))
    download = reverse("cases-attachment", args=[complaint.reference, attachment.pk])
    assert download in page.content.decode()
    got = client.get(download)
    assert got.status_code == 200
    assert b"".join(got.streaming_content) == PDF
    assert got["Content-Type"] == "application/pdf"
    assert got["Content-Disposition"] == 'attachment; filename="claim-form.pdf"'
    assert got["X-Content-Type-Options"] == "nosniff"
    assert got["Cache-Control"] == "private, no-store"
    # a reviewer (no case work) and a signed-out visitor get nothing
    signed_in(client, reviewer)
    assert client.get(download).status_code == 403
    client.logout()
    assert client.get(download).status_code == 302


def test_attachment_limits_size_and_checked_content_type(client, complaint, agent, settings):
    settings.CASES_ATTACHMENT_MAX_MB = 1
    signed_in(client, agent)
    too_big = upload(client, complaint, "scan.pdf", PDF + b"0" * (1024 * 1024))
    assert too_big.status_code == 400
    assert "The file is larger than 1 MB; attach a smaller one." in text(too_big)
    # a program renamed .pdf: its bytes say otherwise, whatever the browser claims
    disguised = upload(client, complaint, "invoice.pdf", b"MZ\x90\x00" + b"\x00" * 64)
    assert disguised.status_code == 400
    assert "invoice.pdf is named .pdf but its content is not PDF" in text(disguised)
    program = upload(client, complaint, "setup.exe", b"MZ\x90\x00", "application/pdf")
    assert program.status_code == 400
    assert "setup.exe is not a type the case accepts; attach one of: PDF, PNG" in text(program)
    assert 'aria-describedby="id_attachment-file_error' in program.content.decode()
    assert not CaseAttachment.objects.exists()
    # text is text: a CSV with a NUL byte is refused, a clean one taken
    assert upload(client, complaint, "calls.csv", b"a,b\x00", "text/csv").status_code == 400
    assert upload(client, complaint, "calls.csv", b"date,minutes\n", "text/csv").status_code == 302


def test_an_attachment_is_only_served_from_its_own_case(client, customer, complaint, agent):
    other = open_complaint(customer, agent, assignee=agent)
    signed_in(client, agent)
    upload(client, complaint, "claim-form.pdf", PDF)
    attachment = CaseAttachment.objects.get()
    url = reverse("cases-attachment", args=[other.reference, attachment.pk])
    assert client.get(url).status_code == 404


# --- operations: the exception queue and the recoveries --------------------------------------


def test_exception_queue_lists_what_failed_and_what_to_do(client, ops, compose_failed):
    case = Case.objects.get(case_type="exception")
    response = signed_in(client, ops).get(reverse("cases-exceptions"))
    assert response.status_code == 200
    [row] = rows(response)
    assert row.startswith(case.reference)
    for said in ("C-1", "letter", "Composition failed", "account", "Correct account in the data"):
        assert said in row, said
    assert reverse("cases-regenerate", args=[case.reference]) in response.content.decode()
    # filtered to what failed
    other = client.get(reverse("cases-exceptions"), {"kind": "undeliverable"})
    assert "No open exceptions of this kind." in text(other)
    assert client.get(reverse("cases-exceptions"), {"kind": "nope"}).status_code == 400


def test_regenerate_form_shows_the_data_as_fields_with_the_failed_one_marked(
    client, ops, compose_failed
):
    case = Case.objects.get(case_type="exception")
    response = signed_in(client, ops).get(reverse("cases-regenerate", args=[case.reference]))
    assert response.status_code == 200
    html = response.content.decode()
    # (the addressee is the customer record's: not a field to correct)
    assert 'name="customer.name"' not in html
    assert 'name="balance" value="12.5"' in html
    assert 'name="as_of" value="2026-05-01"' in html
    assert re.search(
        r'<span class="error" id="id_account_error">Required: fill this in.</span>\s*'
        r'<input type="text" name="account" aria-invalid="true" '
        r'aria-describedby="id_account_error" id="id_account">',
        html,
    )
    assert "<legend>Customer" not in html


def test_regenerate_with_data_still_wrong_marks_the_fields_and_changes_nothing(
    client, ops, compose_failed
):
    case = Case.objects.get(case_type="exception")
    url = reverse("cases-regenerate", args=[case.reference])
    signed_in(client, ops)
    form = {"customer.name": "", "balance": "12.5", "as_of": "2026-05-01", "account": ""}
    # a number that is not one is caught at its field before the service is asked
    for not_a_number in ("twelve", "Infinity", "NaN"):
        response = client.post(url, {**form, "balance": not_a_number, "account": "ACC-9"})
        assert response.status_code == 400
        assert 'id="id_balance_error">Enter a number.' in response.content.decode()
    # what the schema refuses is put on its field, in words
    response = client.post(url, form)
    assert response.status_code == 400
    html = response.content.decode()
    assert re.search(r'id="id_account_error">Required: fill this in.', html)
    # (an emptied customer name is no error: the addressee comes from the customer record)
    assert "customer.name" not in html
    compose_failed.refresh_from_db()
    case.refresh_from_db()
    assert (compose_failed.state, case.state, case.recovery_action) == ("compose_failed", "new", "")


def test_regenerate_from_the_form_sends_it_and_the_case_shows_resolved(
    client, ops, compose_failed, sync_tasks
):
    case = Case.objects.get(case_type="exception")
    mail.outbox = []
    signed_in(client, ops)
    response = sync_tasks(
        client.post,
        reverse("cases-regenerate", args=[case.reference]),
        {"balance": "12.5", "as_of": "2026-05-01", "account": "ACC-42"},
    )
    assert response.status_code == 302
    assert response.url == detail_url(case)
    compose_failed.refresh_from_db()
    assert compose_failed.state == "sent"
    assert compose_failed.data == {**DATA, "account": "ACC-42"}
    assert [m.to for m in mail.outbox] == [["Ada Lovelace <ada@example.org>"]]
    page = text(client.get(detail_url(case)))
    assert "State Resolved" in page
    assert "Regenerated communication sent" in page
    assert f"Communication {compose_failed.pk} composed again with corrected data and sent." in page


@pytest.fixture
def undeliverable(settings, letter, customer, integrator, ops, sync_tasks) -> Case:
    # Email only, and the customer's address bounced for good: nothing can reach them.
    settings.CCM_ENABLED_CHANNELS = ["email"]
    customer_services.suppression_add(
        channel="email", address="ada@example.org", reason="hard_bounce"
    )
    communication = sync_tasks(request, customer, integrator)
    communication.refresh_from_db()
    assert communication.state == "undeliverable"
    # Operations may resend by post, once print is running again.
    settings.CCM_ENABLED_CHANNELS = ["email", "print"]
    return Case.objects.get(exception_kind="undeliverable")


def test_resend_suggests_the_customers_contacts_and_sends_to_another_address(
    client, ops, undeliverable, customer, sync_tasks
):
    signed_in(client, ops)
    url = reverse("cases-resend", args=[undeliverable.reference])
    page = client.get(url)
    assert page.status_code == 200
    suggestions = rows(page)
    assert "ada@example.org" in suggestions[-1]
    assert "suppressed (hard bounce)" in suggestions[-1]
    assert any("print 1 Analytical Row / London N1 1AA" in r for r in suggestions)
    # a suppressed address typed in is refused on its field
    refused = client.post(url, {"channel": "email", "address": "ada@example.org"})
    assert refused.status_code == 400
    assert "ada@example.org is suppressed on email" in text(refused)
    # when
    mail.outbox = []
    done = sync_tasks(client.post, url, {"channel": "email", "address": "ada.l@example.net"})
    # then
    assert done.status_code == 302
    assert mail.outbox[-1].to == ["Ada Lovelace <ada.l@example.net>"]
    undeliverable.refresh_from_db()
    assert undeliverable.state == "resolved"
    assert "sent again by email to ada.l@example.net" in text(client.get(detail_url(undeliverable)))


def test_a_recovery_that_does_not_fit_the_case_says_so(client, ops, complaint, undeliverable):
    signed_in(client, ops)
    response = client.get(reverse("cases-regenerate", args=[undeliverable.reference]))
    assert response.status_code == 409
    assert "is not an exception a regenerate can fix (it is undeliverable)." in text(response)
    response = client.post(reverse("cases-resend", args=[complaint.reference]), {})
    assert response.status_code == 409


def test_the_data_form_follows_a_library_schema_with_references_enums_and_lists():
    # given the final response letter's schema ($defs for the handler, an enum, a list)
    bundle = read_folder(LIBRARY / "complaint_final_response")
    sample = {k: v for k, v in bundle.samples["default"].items() if k != "customer"}
    # when it becomes a form prefilled with the sample
    form = web_data_form.SchemaForm.prefilled(schema=bundle.schema, data=sample)
    groups = [i for i in form.layout_items() if i["is_group"]]
    # then the referenced handler is a group of its own fields, the enum a choice, the list JSON
    assert "handler" in [g["path"] for g in groups]
    assert form["handler.name"].value() == sample["handler"]["name"]
    # and the addressee is no field to fill in: it comes from the customer record
    assert not any(name.startswith("customer") for name in form.fields)
    assert [c for c, _ in form.fields["decision"].choices] == [
        "",
        "upheld",
        "partly_upheld",
        "not_upheld",
    ]
    assert form.kinds["findings"] in ("raw_json", "lines:string")
    assert form.kinds["document_date"] == "date"
    # and what is typed back comes out typed
    assert form.is_valid(), form.errors
    assert form.cleaned_data["data"] == sample
    # and an emptied field is left out, so the schema names it as missing, in words
    posted = dict(form.data)
    posted["account_reference"] = ""
    again = web_data_form.SchemaForm(posted, schema=bundle.schema, base=sample)
    assert not again.is_valid()
    assert "account_reference" not in again.cleaned_data["data"]
    assert again.errors["account_reference"] == ["Required: fill this in."]


def test_attachment_upload_still_needs_the_csrf_token(complaint, agent):
    client = Client(enforce_csrf_checks=True)
    client.force_login(agent)
    response = upload(client, complaint, "claim-form.pdf", PDF)
    assert response.status_code == 403
    assert not CaseAttachment.objects.exists()
