"""Every list people use reads a constant number of statements a page, however many rows there
are, never counts a whole table, and searches through indexes built for it (ccm/lists.py,
ccm/search.py). The figures at a million rows are bench/screens.py's."""

from __future__ import annotations

import hashlib
import json
import re
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.html import escape

from cases.models import Case, CaseType, ExceptionKind
from cases.web.queues import exception_queue
from ccm import audit
from ccm.lists import CountLimitedPaginator, distinct_values, limited_count
from documents.models import Document, Template, TemplateVersion
from notifications.campaigns.models import Campaign, Segment
from notifications.models import (
    Communication,
    CommunicationStep,
    ContactPoint,
    Customer,
    Delivery,
    SendJob,
)
from notifications.selectors import customer_search

LISTS = [
    "/admin/notifications/communication/",
    "/admin/notifications/communication/?state__exact=sent",
    "/admin/notifications/communication/?q=Customer",
    "/admin/notifications/customer/",
    "/admin/notifications/customer/?q=example.org",
    "/admin/notifications/customer/?source_system=core",
    "/admin/documents/document/",
    "/admin/cases/case/",
    "/admin/cases/case/?q=C-",
    "/admin/notifications/campaign/",
    "/admin/ccm/auditevent/",
    "/admin/ccm/auditevent/?q=case.opened",
    "/jobs/",
    "/cases/exceptions/",
    "/cases/?queue=operations",
    "/review/",
    "/api/v1/communications",
    "/api/v1/cases",
    "/api/v1/templates",
]
CHANGELISTS = [url for url in LISTS if url.startswith("/admin/")]


@pytest.fixture
def world(admin_user):
    template = Template.objects.create(code="statement", name="Statement", category="service")
    version = TemplateVersion.objects.create(
        template=template,
        number=1,
        state="published",
        content={"schema": {}, "print": {"body": "x" * 1000}},
        content_hash="h",
        author=admin_user,
    )
    segment = Segment.objects.create(name="All", definition={})
    return {"template": template, "version": version, "segment": segment, "user": admin_user}


def grow(world, upto: int) -> None:
    """Add rows of every listed kind until there are `upto` of each."""
    start = Customer.objects.count()
    now = timezone.now()
    for n in range(start, upto):
        customer = Customer.objects.create(
            source_system="core",
            external_ref=f"REF-{n:05d}",
            name=f"Customer {n:05d}",
            language="en",
            postal_address=["1 High Street"],
        )
        ContactPoint.objects.create(customer=customer, kind="email", value=f"c{n}@example.org")
        document = Document.objects.create(
            template_version=world["version"],
            kind="letter",
            language="en",
            locale="en-GB",
            data={},
            file=f"documents/{n}.pdf",
            sha256=hashlib.sha256(str(n).encode()).hexdigest(),
            size=1,
            page_count=1,
            engine={},
        )
        Communication.objects.create(
            template=world["template"],
            template_version=world["version"],
            customer=customer,
            category="service",
            state="sent",
            document=document,
            correlation_id=f"corr-{n}",
            data={},
        )
        case = Case.objects.create(
            reference=f"C-{n:05d}",
            case_type=CaseType.EXCEPTION if n % 2 else CaseType.COMPLAINT,
            exception_kind=ExceptionKind.COMPOSE_FAILED if n % 2 else "",
            subject=f"Case {n}",
            team="operations",
            received_at=now,
            next_due_at=now,
            customer=customer,
        )
        audit.record(actor=world["user"], action="case.opened", subject=case)
        Campaign.objects.create(
            name=f"Campaign {n}",
            category="service",
            template_version=world["version"],
            segment=world["segment"],
            created_by=world["user"],
        )
        SendJob.objects.create(
            source="csv",
            client="back-office",
            state="completed",
            total=1,
            template=world["template"],
        )


def statements(client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    # The API's rate limit counts in the shared cache (the database cache by default), with a
    # window's first request and the previous window's count read once per process: those
    # statements follow the clock, not the rows (tests/notifications/test_intake_cost.py counts
    # them apart too).
    return [q["sql"] for q in captured.captured_queries if '"ccm_cache"' not in q["sql"]]


@pytest.mark.django_db
def test_every_list_reads_as_many_statements_for_50_rows_as_for_5(client, world, admin_user):
    client.force_login(admin_user)
    grow(world, 5)
    few = {url: len(statements(client, url)) for url in LISTS}

    grow(world, 50)
    many = {url: len(statements(client, url)) for url in LISTS}

    assert many == few


@pytest.mark.django_db
def test_changelist_rows_link_and_select_as_djangos_do_without_the_model_sidebar(
    client, world, admin_user
):
    from django.urls import reverse

    client.force_login(admin_user)
    grow(world, 3)

    html = client.get("/admin/cases/case/").content.decode()

    for case in Case.objects.all():
        assert f'href="{reverse("admin:cases_case_change", args=[case.pk])}"' in html
        assert (
            f'<input type="checkbox" name="_selected_action" value="{case.pk}" '
            f'class="action-select" aria-label="Select this object for an action - {case}">'
        ) in html
    assert 'id="action-toggle"' in html
    # the list of every model is not drawn (nor built) on a list page
    assert 'id="nav-sidebar"' not in html


@pytest.mark.django_db
def test_a_filtered_lists_row_links_keep_its_filters_as_djangos_do(client, world, admin_user):
    from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
    from django.urls import reverse

    client.force_login(admin_user)
    grow(world, 3)
    case = Case.objects.first()

    html = client.get("/admin/cases/case/", {"state__exact": case.state}).content.decode()

    # the link Django's own changelist would write, back to the list with its filter
    django_link = add_preserved_filters(
        {
            "preserved_filters": f"_changelist_filters=state__exact%3D{case.state}",
            "opts": Case._meta,
        },
        reverse("admin:cases_case_change", args=[case.pk]),
    )
    assert f'href="{escape(django_link)}"' in html


@pytest.mark.django_db
def test_changelists_never_count_a_whole_table(client, world, admin_user):
    # given more rows than a list counts exactly
    client.force_login(admin_user)
    grow(world, 12)
    limit = 10

    # when every changelist is opened
    import ccm.lists

    original, ccm.lists.EXACT_COUNT_LIMIT = ccm.lists.EXACT_COUNT_LIMIT, limit
    try:
        sql = [s for url in CHANGELISTS for s in statements(client, url)]
    finally:
        ccm.lists.EXACT_COUNT_LIMIT = original

    # then every COUNT(*) is over a LIMITed subquery, and no date list is built from every row
    counts = [s for s in sql if "COUNT(" in s.upper()]
    assert counts
    assert [s for s in counts if "LIMIT" not in s.upper()] == []
    assert [s for s in sql if "DATE_TRUNC" in s.upper() and "DISTINCT" in s.upper()] == []


@pytest.mark.django_db
def test_a_count_past_the_limit_is_the_planners_estimate_without_reading_the_rows(world):
    grow(world, 12)
    with CaptureQueriesContext(connection) as captured:
        count = limited_count(Customer.objects.all(), limit=5)
    assert count >= 6
    assert any(s["sql"].upper().startswith("EXPLAIN") for s in captured.captured_queries)
    assert CountLimitedPaginator(Customer.objects.all(), 100).count == 12  # exact below it


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("REF-00007", ["REF-00007"]),
        ("ref-00007", ["REF-00007"]),
        ("Customer 00003", ["REF-00003"]),
        ("c11@example.org", ["REF-00011"]),
        ("corr-4", ["REF-00004"]),
    ],
)
def test_communications_are_found_by_reference_name_email_and_correlation_id(
    client, world, admin_user, term, expected
):
    client.force_login(admin_user)
    grow(world, 12)
    page = client.get("/admin/notifications/communication/", {"q": term})
    assert page.status_code == 200
    found = sorted(set(re.findall(r"REF-\d{5}", page.content.decode())))
    assert found == expected


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "term", "expected"),
    [
        ("/admin/notifications/customer/", "REF-0000", 10),
        ("/admin/notifications/customer/", "Customer 00005", 1),
        ("/admin/notifications/customer/", "C5@EXAMPLE.ORG", 1),
        ("/admin/cases/case/", "C-00002", 1),
        ("/admin/cases/case/", "REF-00003", 1),
        ("/admin/cases/case/", "c4@example.org", 1),
        ("/admin/cases/case/", "nobody at all", 0),
    ],
)
def test_customers_and_cases_are_found_by_reference_name_and_email(
    client, world, admin_user, url, term, expected
):
    client.force_login(admin_user)
    grow(world, 12)
    page = client.get(url, {"q": term})
    assert page.status_code == 200
    assert len(page.context["cl"].result_list) == expected


@pytest.mark.django_db
def test_documents_and_audit_events_are_found(client, world, admin_user):
    client.force_login(admin_user)
    grow(world, 12)
    document = Document.objects.order_by("pk")[3]
    event = audit.record(actor=admin_user, action="customer.address_corrected")

    by_sha = client.get("/admin/documents/document/", {"q": document.sha256[:12].upper()})
    by_id = client.get("/admin/documents/document/", {"q": str(document.pk)})
    by_action = client.get("/admin/ccm/auditevent/", {"q": "customer.address"})
    by_hash = client.get("/admin/ccm/auditevent/", {"q": event.hash[:10]})

    assert list(by_sha.context["cl"].result_list) == [document]
    assert list(by_id.context["cl"].result_list) == [document]
    assert list(by_action.context["cl"].result_list) == [event]
    assert list(by_hash.context["cl"].result_list) == [event]


def _plan(queryset) -> str:
    with connection.cursor() as cursor:
        # As at a million rows: an index the query can use is used.
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = queryset.explain(format="json")
    return json.dumps(json.loads(plan))


@pytest.mark.django_db
def test_the_exception_queue_is_read_in_order_from_its_partial_expression_index(world):
    grow(world, 12)
    plan = _plan(exception_queue()[:25])
    assert "case_exception_queue" in plan
    assert '"Sort"' not in plan


@pytest.mark.django_db
def test_a_customer_search_reads_the_trigram_indexes(world):
    # given the trigram indexes on what Django's icontains compares, UPPER(column)
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE '%_trgm'")
        indexes = dict(cursor.fetchall())
    for name, column in [
        ("customer_name_trgm", "name"),
        ("customer_ref_trgm", "external_ref"),
        ("contact_value_trgm", "value"),
        ("case_reference_trgm", "reference"),
        ("case_subject_trgm", "subject"),
    ]:
        assert f"gin (upper(({column})::text) gin_trgm_ops)" in indexes[name]
    grow(world, 12)

    # then the search's lookups can read them (on a few rows the planner may prefer a b-tree
    # for some; bench/screens.py shows all three in use at a bank's size)
    plan = _plan(Customer.objects.filter(pk__in=customer_search("REF-0001")))
    assert "_trgm" in plan


@pytest.mark.django_db
def test_a_filter_lists_the_values_a_column_has(world):
    grow(world, 3)
    Customer.objects.create(source_system="cards", external_ref="X", name="X", language="fr")
    assert distinct_values(Customer, "source_system") == ["cards", "core"]
    assert distinct_values(Customer, "language") == ["en", "fr"]


def test_a_search_for_a_public_id_is_parsed_as_one():
    from ccm.search import as_int, as_uuid, search_term

    public_id = uuid.uuid4()
    assert as_uuid(str(public_id)) == public_id
    assert as_uuid("REF-1") is None
    assert as_int("123") == 123
    assert as_int("12a") is None
    assert search_term('  "Jane   Smith" ') == "Jane Smith"
    assert search_term("O'Brien") == "O'Brien"


@pytest.mark.django_db
def test_a_lookup_by_a_link_most_rows_leave_empty_reads_its_partial_index(world):
    # given the columns indexed only where set (a communication is written four times and
    # each write would otherwise add an entry to each of their indexes)
    grow(world, 12)

    # then every lookup the code makes by one of them (an exact value or a list of them, and
    # the foreign keys' own checks) can still read its index
    for queryset, index in [
        (Communication.objects.filter(correlation_id="SPRING-2027"), "communication_correlation"),
        (Communication.objects.filter(document_id__in=[1, 2]), "communication_document_set"),
        (Communication.objects.filter(parent_id=1), "communication_parent_set"),
        (Communication.objects.filter(template_version_id=1), "communication_version_set"),
        (Communication.objects.filter(created_by_id=1), "communication_creator_set"),
        (
            Delivery.objects.filter(provider_message_id__in=["pm-1", "pm-2"]),
            "delivery_provider_message_id",
        ),
        (CommunicationStep.objects.filter(seal_id=1), "step_sealed_by"),
        (CommunicationStep.objects.filter(actor_id=1), "step_actor_set"),
    ]:
        assert index in _plan(queryset), index
