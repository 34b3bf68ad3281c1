"""Reading intake: the API and the file imports share one bulk, idempotent write."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from notifications.statements.models import Reading, ReadingCorrection
from tests.statements.conftest import make_meter


def rows(serial, values, day="2026-01-01"):
    return [
        {"meter": serial, "start": f"{day}T{i // 2:02d}:{30 * (i % 2):02d}:00Z", "value": v}
        for i, v in enumerate(values)
    ]


def test_readings_are_stored_once_per_meter_and_interval(api, meter):
    # given a day of half-hourly readings
    body = {"readings": rows(meter.serial, ["0.5"] * 48)}
    # when it is sent twice
    first = api.post("/api/v1/readings", body, format="json")
    again = api.post("/api/v1/readings", body, format="json")
    # then the second call changes nothing
    assert first.status_code == 200, first.json()
    assert first.json() == {"received": 48, "inserted": 48, "corrected": 0, "unchanged": 0}
    assert again.json() == {"received": 48, "inserted": 0, "corrected": 0, "unchanged": 48}
    assert Reading.objects.filter(meter=meter).count() == 48


def test_a_different_value_is_a_correction_the_later_wins_and_the_earlier_is_kept(api, meter):
    api.post("/api/v1/readings", {"readings": rows(meter.serial, ["0.5", "0.7"])}, format="json")
    response = api.post(
        "/api/v1/readings",
        {"readings": rows(meter.serial, ["0.5", "0.9"])},
        format="json",
    )
    assert response.json() == {"received": 2, "inserted": 0, "corrected": 1, "unchanged": 1}
    reading = Reading.objects.get(meter=meter, start__minute=30)
    assert reading.value == Decimal("0.900")
    correction = ReadingCorrection.objects.get()
    assert (correction.reading_id, correction.value) == (reading.pk, Decimal("0.700"))


def test_bad_rows_are_refused_with_row_and_field_and_nothing_is_stored(api, meter):
    body = {
        "readings": [
            {"meter": meter.serial, "start": "2026-01-01T00:00:00Z", "value": "0.5"},
            {"meter": "NOPE", "start": "2026-01-01T00:00:00Z", "value": "0.5"},
            {"meter": meter.serial, "start": "2026-01-01T00:10:00Z", "value": "0.5"},
            {"meter": meter.serial, "start": "2026-01-01 00:30", "value": "x"},
            {"meter": meter.serial, "start": "2026-01-01T01:00:00Z", "value": "1", "quality": "?"},
        ]
    }
    response = api.post("/api/v1/readings", body, format="json")
    assert response.status_code == 422
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert errors == {
        "readings[1].meter": "no meter 'NOPE'",
        "readings[2].start": "not the start of a 30-minute interval of meter E-A-1",
        "readings[3].start": "'2026-01-01 00:30' has no UTC offset; add Z or +01:00",
        "readings[3].value": "'x' is not a number",
        "readings[4].quality": "one of actual, estimated, customer, missing",
    }
    assert not Reading.objects.exists()


def test_readings_need_the_readings_scope(db, meter):
    from rest_framework.test import APIClient

    from ccm.api.auth import api_key_create

    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Api-Key {api_key_create(name='x', scopes=['customers:write']).key}"
    )
    response = client.post("/api/v1/readings", {"readings": []}, format="json")
    assert response.status_code == 403


GREEN_BUTTON = b"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:espi="http://naesb.org/espi">
 <entry><content><espi:ReadingType>
   <espi:accumulationBehaviour>4</espi:accumulationBehaviour>
   <espi:intervalLength>1800</espi:intervalLength>
   <espi:powerOfTenMultiplier>0</espi:powerOfTenMultiplier>
   <espi:uom>72</espi:uom>
 </espi:ReadingType></content></entry>
 <entry><content><espi:IntervalBlock>
   <espi:interval><espi:duration>3600</espi:duration><espi:start>1767225600</espi:start></espi:interval>
   <espi:IntervalReading>
     <espi:timePeriod><espi:duration>1800</espi:duration><espi:start>1767225600</espi:start></espi:timePeriod>
     <espi:value>450</espi:value>
   </espi:IntervalReading>
   <espi:IntervalReading>
     <espi:ReadingQuality><espi:quality>8</espi:quality></espi:ReadingQuality>
     <espi:timePeriod><espi:duration>1800</espi:duration><espi:start>1767227400</espi:start></espi:timePeriod>
     <espi:value>1250</espi:value>
   </espi:IntervalReading>
 </espi:IntervalBlock></content></entry>
</feed>
"""


def test_green_button_file_is_imported_in_kwh_with_its_quality(tmp_path, meter):
    path = tmp_path / "usage.xml"
    path.write_bytes(GREEN_BUTTON)
    call_command("import_readings", str(path), "--meter", meter.serial)
    got = list(Reading.objects.order_by("start").values_list("start", "value", "quality"))
    assert [(s.isoformat(), v, q) for s, v, q in got] == [
        ("2026-01-01T00:00:00+00:00", Decimal("0.450"), "actual"),
        ("2026-01-01T00:30:00+00:00", Decimal("1.250"), "estimated"),
    ]


def test_green_button_with_entities_is_refused(tmp_path, meter):
    path = tmp_path / "bomb.xml"
    path.write_bytes(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    with pytest.raises(CommandError, match="no DOCTYPE or entities"):
        call_command("import_readings", str(path), "--meter", meter.serial)


def test_csv_import_names_the_bad_row(tmp_path, db):
    meter = make_meter("C-1")
    path = tmp_path / "readings.csv"
    path.write_text(
        "meter,start,value,quality\n"
        f"{meter.serial},2026-01-01T00:00:00Z,0.5,actual\n"
        f"{meter.serial},2026-01-01T00:30:00Z,-,actual\n"
    )
    with pytest.raises(CommandError, match=r"row 3: value: '-' is not a number"):
        call_command("import_readings", str(path))
    path.write_text(f"meter,start,value\n{meter.serial},2026-01-01T00:00:00Z,0.5\n")
    call_command("import_readings", str(path))
    assert Reading.objects.filter(meter=meter).count() == 1


def _csv(serial, values, day="2026-01-01", quality="actual"):
    lines = ["start,meter,value,quality"]  # the header names the columns, in any order
    for i, v in enumerate(values):
        lines.append(f"{day}T{i // 2:02d}:{30 * (i % 2):02d}:00+00:00,{serial},{v},{quality}")
    return ("\n".join(lines) + "\n").encode()


def test_csv_and_arrays_take_the_set_based_path_with_no_per_row_python(api, meter, monkeypatch):
    from notifications.statements import readings

    def per_row(*args):
        raise AssertionError("a good call must not be parsed row by row")

    monkeypatch.setattr(readings, "_parsed", per_row)
    monkeypatch.setattr(readings, "_row_errors", per_row)
    # given a day as CSV and the next day as arrays, with a repeat: the last row wins
    first = api.post("/api/v1/readings", _csv(meter.serial, ["0.5"] * 48), content_type="text/csv")
    arrays = [[meter.serial, f"2026-01-02T00:{m:02d}:00Z", "0.25", None] for m in (0, 30)]
    arrays.append([meter.serial, "2026-01-02T00:30:00Z", "0.75", "estimated"])
    second = api.post("/api/v1/readings", {"rows": arrays}, format="json")
    # and the first day again with one value changed
    changed = api.post(
        "/api/v1/readings",
        _csv(meter.serial, ["0.5"] * 47 + ["0.125"]),
        content_type="text/csv",
    )
    # then
    assert first.json() == {"received": 48, "inserted": 48, "corrected": 0, "unchanged": 0}
    assert second.json() == {"received": 3, "inserted": 2, "corrected": 0, "unchanged": 0}
    assert changed.json() == {"received": 48, "inserted": 0, "corrected": 1, "unchanged": 47}
    later = Reading.objects.get(meter=meter, start="2026-01-02T00:30:00Z")
    assert (later.value, later.quality) == (Decimal("0.750"), "estimated")
    last = Reading.objects.get(meter=meter, start="2026-01-01T23:30:00Z")
    assert last.value == Decimal("0.125")
    assert ReadingCorrection.objects.get().value == Decimal("0.500")


def test_bad_csv_and_array_rows_are_named_and_nothing_is_stored(api, meter):
    body = _csv(meter.serial, ["0.5", "0.5", "0.1234", "x", "1e3"]).replace(
        b"02:00:00+00:00", b"02:10:00+00:00"
    )
    response = api.post("/api/v1/readings", body, content_type="text/csv")
    assert response.status_code == 422, response.json()
    assert {e["field"]: e["message"] for e in response.json()["errors"]} == {
        "rows[2].value": "'0.1234' has more than 3 decimal places",
        "rows[3].value": "'x' is not a number",
        "rows[4].start": "not the start of a 30-minute interval of meter E-A-1",
    }
    arrays = {"rows": [[meter.serial, "2026-01-01T00:00:00", "1", None], "E-A-1"]}
    response = api.post("/api/v1/readings", arrays, format="json")
    assert {e["field"]: e["message"] for e in response.json()["errors"]} == {
        "rows[1]": "an array [meter, start, value, quality]"
    }
    assert not Reading.objects.exists()
    # a form the set-based check leaves to Python ("1e3") is still taken
    response = api.post(
        "/api/v1/readings", _csv(meter.serial, ["1e3", "0.5"]), content_type="text/csv"
    )
    assert response.json()["inserted"] == 2
    assert Reading.objects.get(meter=meter, start="2026-01-01T00:00:00Z").value == 1000


def test_more_readings_than_a_call_takes_is_413(api, meter, monkeypatch):
    from notifications.statements import readings

    monkeypatch.setattr(readings, "MAX_READINGS", 3)
    response = api.post(
        "/api/v1/readings", _csv(meter.serial, ["0.5"] * 4), content_type="text/csv"
    )
    assert response.status_code == 413
    assert response.json()["detail"].startswith("At most 3 readings a call")
    response = api.post(
        "/api/v1/readings", {"readings": rows(meter.serial, ["0.5"] * 4)}, format="json"
    )
    assert response.status_code == 413
    assert not Reading.objects.exists()


@pytest.mark.parametrize(
    "body", [b"", b"\x00\x01", b"meter,start\n", b"meter,start,value\n\x00,a,b\n"]
)
def test_a_csv_body_that_is_not_readings_is_a_422(api, meter, body):
    response = api.post("/api/v1/readings", body, content_type="text/csv")
    assert response.status_code == 422, response.content
