from __future__ import annotations

import resource
from datetime import date

import pytest

from documents.composition import (
    LOOP_MAX_ITERATIONS,
    PRINT_DRAWING,
    PUSH_BODY_MAX,
    PUSH_TITLE_MAX,
    Composer,
    DataInvalid,
    FieldError,
    PageSpec,
    Sources,
    TemplateError,
    chart,
    composer_for,
    sources_key,
    validate_data,
)
from tests.timing import within

FILTERS = (
    "{{ amount|money('EUR') }}|{{ amount|number }}|{{ amount|number(2) }}|{{ rate|percent(1) }}"
    "|{{ due|date }}|{{ due|date('short') }}|{{ at|datetime('short') }}"
)
DATA = {"amount": "1234567.891", "rate": 0.125, "due": "2024-03-05", "at": "2024-03-05T14:30:00"}


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        (
            "en_GB",
            "€1,234,567.89|1,234,567.891|1,234,567.89|12.5%|5 March 2024|05/03/2024"
            "|05/03/2024, 14:30",
        ),
        (
            "de_DE",
            "1.234.567,89\xa0€|1.234.567,891|1.234.567,89|12,5\xa0%|5. März 2024|05.03.24"
            "|05.03.24, 14:30",
        ),
        (
            "fr_FR",
            "1\u202f234\u202f567,89\xa0€|1\u202f234\u202f567,891|1\u202f234\u202f567,89"
            "|12,5\xa0%|5 mars 2024|05/03/2024|05/03/2024 14:30",
        ),
    ],
)
def test_filters_format_for_the_composer_locale(locale, expected):
    composer = Composer(Sources(email_subject=FILTERS, email_text="-"), locale=locale)

    assert composer.email(DATA).subject == expected


def test_date_filter_accepts_dates_datetimes_and_iso_strings():
    composer = Composer(Sources(sms_text="{{ a|date }}/{{ b|date }}/{{ c|date('short') }}"))

    text = composer.sms({"a": date(2024, 1, 2), "b": "2024-01-02T23:00:00", "c": "2024-12-31"}).text

    assert text == "2 January 2024/2 January 2024/31/12/2024"


def test_money_filter_refuses_non_numbers_with_the_value_in_the_reason():
    composer = Composer(Sources(sms_text="{{ x|money('GBP') }}"))

    with pytest.raises(TemplateError, match=r"sms.txt line 1: money: 'lots' is not a number"):
        composer.sms({"x": "lots"})


def test_undefined_variable_names_part_and_line():
    composer = Composer(Sources(print_html="<p>Dear</p>\n\n<p>{{ customer.name }}</p>"))

    with pytest.raises(TemplateError) as caught:
        composer.print_html({}, drawing=PRINT_DRAWING)

    assert caught.value.reason == "print.html line 3: 'customer' is undefined"


def test_undefined_variable_in_partial_names_the_partial():
    sources = Sources(
        print_html="{% include 'address.html' %}",
        partials={"address.html": "<p>{{ name }}</p>\n<p>{{ street }}</p>"},
    )

    with pytest.raises(TemplateError) as caught:
        Composer(sources).print_html({"name": "Ann"}, drawing=PRINT_DRAWING)

    assert caught.value.reason == "print.html (address.html) line 2: 'street' is undefined"


def test_syntax_error_names_part_and_line():
    with pytest.raises(TemplateError, match=r"^email.html line 2: "):
        Composer(Sources(email_subject="Hi", email_html="ok\n{% if %}")).email({})


def test_partials_are_included():
    sources = Sources(
        print_html="<main>{% include 'sig.html' %}</main>",
        partials={"sig.html": "<i>{{ who }}</i>"},
    )

    html = Composer(sources).print_html({"who": "Bank & Co"}, drawing=PRINT_DRAWING)

    assert "<main><i>Bank &amp; Co</i></main>" in html


def test_print_html_is_a_full_document_with_lang_and_charset():
    html = Composer(Sources(print_html="<p>{{ n }}</p>"), locale="de_DE").print_html(
        {"n": "<b>"}, drawing=PRINT_DRAWING
    )

    assert html.startswith('<!DOCTYPE html>\n<html lang="de-DE"><head><meta charset="utf-8">')
    assert "<body><p>&lt;b&gt;</p></body></html>" in html


def test_email_escapes_html_but_not_text_or_subject():
    sources = Sources(
        email_subject="Re: {{ topic }}\nBcc: x@example.com",
        email_html="<p>{{ topic }}</p>",
        email_text="Topic: {{ topic }}",
    )

    email = Composer(sources).email({"topic": "<script>alert(1)</script> & co"})

    assert email.html == "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; co</p>"
    assert email.text == "Topic: <script>alert(1)</script> & co"
    # newlines in a subject would let data add headers
    assert email.subject == "Re: <script>alert(1)</script> & co Bcc: x@example.com"


def test_data_invalid_lists_every_error_with_its_path():
    schema = {
        "type": "object",
        "required": ["customer", "account"],
        "properties": {
            "customer": {
                "type": "object",
                "required": ["name", "email"],
                "properties": {"email": {"type": "string", "format": "email"}},
            },
            "items": {"type": "array", "items": {"type": "integer"}},
        },
    }

    with pytest.raises(DataInvalid) as caught:
        validate_data(schema, {"customer": {"email": "not-an-email"}, "items": [1, "two"]})

    assert caught.value.errors == [
        FieldError("account", "'account' is a required property"),
        FieldError("customer.email", "'not-an-email' is not a 'email'"),
        FieldError("customer.name", "'name' is a required property"),
        FieldError("items.1", "'two' is not of type 'integer'"),
    ]
    assert "customer.name: 'name' is a required property" in caught.value.reason


def test_valid_data_passes():
    validate_data({"type": "object", "required": ["a"]}, {"a": 1})


def test_invalid_schema_is_a_template_error():
    with pytest.raises(TemplateError, match="data schema is invalid"):
        validate_data({"type": "nonsense"}, {})


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension chars cost two septets
        ("€" * 81, "GSM-7", 2),
        # the escape pair is never split: the € does not fit in the first segment's last septet
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 3),
        ("é" * 160, "GSM-7", 1),  # é is in the GSM basic table
        ("ł" * 70, "UCS-2", 1),
        ("ł" * 71, "UCS-2", 2),
        ("ł" * 134, "UCS-2", 2),
        ("ł" * 135, "UCS-2", 3),
        ("😀" * 35, "UCS-2", 1),  # two UTF-16 units each
        ("😀" * 36, "UCS-2", 2),
    ],
)
def test_sms_segment_maths(text, encoding, segments):
    sms = Composer(Sources(sms_text="{{ t }}")).sms({"t": text})

    assert (sms.encoding, sms.segments) == (encoding, segments)


def test_sms_over_six_segments_is_refused():
    with pytest.raises(TemplateError, match="needs 7 GSM-7 segments, more than the 6 allowed"):
        Composer(Sources(sms_text="{{ t }}")).sms({"t": "a" * (153 * 6 + 1)})


def test_sms_is_not_escaped_and_is_trimmed():
    sms = Composer(Sources(sms_text="\n  Code {{ c }} & more  \n")).sms({"c": "<1>"})

    assert sms.text == "Code <1> & more"


def test_push_at_limits_is_accepted():
    push = Composer(Sources(push_title="{{ t }}", push_body="{{ b }}")).push(
        {"t": "T" * PUSH_TITLE_MAX, "b": "B" * PUSH_BODY_MAX}
    )

    assert (len(push.title), len(push.body)) == (65, 240)


@pytest.mark.parametrize(
    ("title", "body", "reason"),
    [
        ("T" * 66, "ok", "push.title: 66 characters, more than the 65 allowed"),
        ("ok", "B" * 241, "push.body: 241 characters, more than the 240 allowed"),
    ],
)
def test_push_over_limits_is_refused(title, body, reason):
    composer = Composer(Sources(push_title="{{ t }}", push_body="{{ b }}"))

    with pytest.raises(TemplateError) as caught:
        composer.push({"t": title, "b": body})

    assert caught.value.reason == reason


def test_sources_key_is_stable_and_covers_everything():
    base = Sources(print_html="<p>x</p>", assets={"logo.png": b"\x89PNG1"})

    assert sources_key(base, "en_GB") == sources_key(
        Sources(print_html="<p>x</p>", assets={"logo.png": b"\x89PNG1"}), "en_GB"
    )
    assert len(sources_key(base, "en_GB")) == 64
    different = [
        sources_key(base, "de_DE"),
        sources_key(Sources(print_html="<p>x</p>", assets={"logo.png": b"\x89PNG2"}), "en_GB"),
        sources_key(
            Sources(print_html="<p>x</p>", assets={"logo.png": b"\x89PNG1"}, page=PageSpec("A5")),
            "en_GB",
        ),
        sources_key(
            Sources(print_html="<p>x</p>", assets={"logo.png": b"\x89PNG1"}, partials={"a": ""}),
            "en_GB",
        ),
    ]
    assert len({sources_key(base, "en_GB"), *different}) == 5


def test_composer_for_reuses_compiled_composer():
    sources = Sources(sms_text="hi {{ n }}")

    first = composer_for(sources, locale="en_GB")
    again = composer_for(Sources(sms_text="hi {{ n }}"), locale="en_GB")

    assert first is again
    assert composer_for(sources, locale="fr_FR") is not first


def test_chart_is_static_deterministic_svg():
    svg = chart("bar", ["Jan", "Feb", "<Mar>"], [10, 20.5, None], title="Usage & cost")

    assert svg.startswith("<svg")
    assert svg == chart("bar", ["Jan", "Feb", "<Mar>"], [10, 20.5, None], title="Usage & cost")
    assert "<script" not in svg
    assert "<?xml" not in svg
    assert "href" not in svg
    assert "<!--" not in svg
    assert "Usage &amp; cost" in svg
    assert "&lt;Mar&gt;" in svg


def test_chart_rejects_unknown_kind():
    with pytest.raises(TemplateError, match="chart: kind must be 'bar' or 'line'"):
        Composer(Sources(print_html="{{ chart('pie', [], []) }}")).print_html(
            {}, drawing=PRINT_DRAWING
        )


def test_string_repetition_bomb_is_refused_before_allocating():
    with pytest.raises(TemplateError, match="repeated sequence would be too large"):
        Composer(Sources(sms_text="{{ 'x' * 10**9 }}")).sms({})


def test_missing_channel_part_is_a_template_error():
    with pytest.raises(TemplateError, match="no SMS version"):
        Composer(Sources(print_html="x")).sms({})


# -- size and iteration tricks (issue 10): refused by the sandbox, with the reason ----------


def test_nested_range_loops_in_sms_are_refused_by_the_iteration_limit():
    sms = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}hi"
    with within(10), pytest.raises(TemplateError) as excinfo:
        Composer(Sources(sms_text=sms)).sms({})
    assert excinfo.value.reason == (
        "sms.txt line 1: not allowed in templates: "
        f"loops ran more than {LOOP_MAX_ITERATIONS} iterations in one rendition"
    )


def test_recursive_loop_calls_share_the_iteration_budget():
    calls = "{{ loop(range(100000)) }}" * 12
    sms = "{% for x in ['top'] recursive %}{% if x == 'top' %}" + calls + "{% endif %}{% endfor %}"
    with within(10), pytest.raises(TemplateError, match="loops ran more than"):
        Composer(Sources(sms_text=sms)).sms({})


def test_centered_string_joined_five_times_is_refused_before_allocating():
    sms = "{% set s = 'x'|center(10**8) %}{{ [s, s, s, s, s]|join }}"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with within(10), pytest.raises(TemplateError) as excinfo:
        Composer(Sources(sms_text=sms)).sms({})
    assert "center() would be 100000000 characters" in excinfo.value.reason
    # The process's peak grew by far less than the 100 MB one centred string would take (the
    # trick used to take 750 MB). A peak, so it is read against the suite's peak before it.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50 * 1024


def test_power_tower_is_refused_before_computing():
    with within(10), pytest.raises(TemplateError) as excinfo:
        Composer(Sources(sms_text="{{ ((10**1000)**1000)**16 }}")).sms({})
    assert "** would give a number of about 1000021 digits" in excinfo.value.reason


@pytest.mark.parametrize(
    ("sms", "reason"),
    [
        ("{{ 'x' * 10**9 }}", "repeated sequence would be too large"),
        ("{{ (10**700) * (10**700) }}", "* would give a number of about"),
        ("{{ '%0100000000d' % 1 }}", "a format width 100000000 is larger than the 1000 allowed"),
        ("{{ '%0100000000d'|format(1) }}", "a format width 100000000"),
        ("{{ 'x'.center(100000000) }}", "center() would be 100000000 characters"),
        ("{{ 'x'.ljust(100000000) }}", "ljust() would be 100000000 characters"),
        ("{{ ''.join(['x'|center(5000000)] * 5) }}", "join() would be 25000000 characters"),
        ("{{ ('x' * 5000000)|replace('x', 'xx') }}", "replace() would be 10000000"),
        ("{{ 'x'|indent(100000000) }}", "indent() would be"),
        ("{{ [1]|batch(10**9, 0)|list }}", "batch() into more than"),
        ("{{ 1|number(100000000) }}", "number() decimals 100000000 is larger"),
        ("{{ lipsum(10**9) }}", "lipsum() paragraphs 1000000000 is larger than the 1000"),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "joining with ~ would be 16777216 characters",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "+ would be 16777216 characters",
        ),
    ],
)
def test_size_tricks_are_refused_with_the_reason(sms, reason):
    with within(10), pytest.raises(TemplateError) as excinfo:
        Composer(Sources(sms_text=sms)).sms({})
    assert reason in excinfo.value.reason


def test_ordinary_loops_arithmetic_and_joins_still_compose():
    sms = (
        "{% for x in items %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}"
        "{% else %}none{% endfor %} {{ 2**10 }} {{ 'ab' * 2 }} {{ items|join('+') }} "
        "{{ 'a' ~ 'b' }} {{ '%05.1f' % 3.14159 }} {{ 'x'|center(5) }}|{{ total + 1 }}"
    )
    text = Composer(Sources(sms_text=sms)).sms({"items": [7, 8, 9], "total": 41}).text
    assert text == "1/3,2/3,3/3 1024 abab 7+8+9 ab 003.1   x  |42"
