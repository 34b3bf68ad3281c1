"""What the OpenAPI schema promises an integrator, read from /api/schema/ as they would."""

from __future__ import annotations

import pytest
from django.core.management import call_command

PROBLEM = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
STAFF_ONLY = {
    ("GET", "/api/v1/api-keys"),
    ("POST", "/api/v1/api-keys"),
    ("POST", "/api/v1/api-keys/{id}/revoke"),
    ("GET", "/api/v1/approvals"),
    ("POST", "/api/v1/approvals/{id}/decide"),
}


@pytest.fixture(scope="module")
def schema(django_db_setup, django_db_blocker):
    # Generated once for the module, as an anonymous caller fetches it.
    from django.test import Client

    with django_db_blocker.unblock():
        response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_operation_documents_its_errors_with_the_problem_schema(schema):
    documented, missing = 0, []
    for method, path, operation in operations(schema):
        responses = operation["responses"]
        expected = {"401", "403", "429"}
        if "{" in path:
            expected.add("404")
        if method == "POST":
            expected |= {"400", "409", "422"}
        if "requestBody" in operation:
            expected |= {"400", "415"}
        errors = {code for code in responses if code.startswith("4")}
        well_formed = all(
            responses[code]["content"] == {PROBLEM: {"schema": {"$ref": PROBLEM_REF}}}
            and responses[code]["description"]
            for code in errors
        )
        if expected <= errors and well_formed:
            documented += 1
        else:
            missing.append((method, path, sorted(expected - errors)))
    total = len(list(operations(schema)))
    print(f"operations documenting their errors: {documented}/{total}")
    assert missing == []
    assert documented == total >= 50
    problem = schema["components"]["schemas"]["Problem"]
    assert set(problem["properties"]) == {"type", "title", "status", "detail", "instance", "errors"}
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    error = schema["components"]["schemas"]["ProblemError"]
    assert set(error["properties"]) == {"field", "message"}


def test_every_post_documents_the_idempotency_key_and_its_limits(schema):
    posts = [(path, op) for method, path, op in operations(schema) if method == "POST"]
    assert posts
    for path, operation in posts:
        header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
        assert header["in"] == "header", path
        assert header["schema"]["minLength"] == 1
        assert header["schema"]["maxLength"] == 255
        assert header["schema"]["pattern"] == "^[!-~]([ -~]*[!-~])?$"
        assert "printable ASCII" in header["description"]
        assert "422" in header["description"]


def test_staff_only_operations_do_not_offer_api_keys(schema):
    for method, path, operation in operations(schema):
        schemes = {name for requirement in operation["security"] for name in requirement}
        if (method, path) in STAFF_ONLY:
            assert schemes == {"cookieAuth"}, (method, path)
            assert "Staff session only" in operation["description"]
        else:
            assert "ApiKey" in schemes, (method, path)


def test_request_bodies_are_json_only(schema):
    bodies = [
        (method, path, set(op["requestBody"]["content"]))
        for method, path, op in operations(schema)
        if "requestBody" in op
    ]
    # The one exception: meter readings also come as CSV, which goes straight into COPY.
    also = {"/api/v1/readings": {"application/json", "text/csv"}}
    assert bodies
    assert [b for b in bodies if b[2] != also.get(b[1], {"application/json"})] == []


def test_descriptions_are_written_for_integrators(schema):
    internal = ("Mix into an APIView", "Base for API views", "swagger_fake_view", "type: ignore")
    for method, path, operation in operations(schema):
        assert operation.get("summary"), (method, path)
        description = operation["description"]
        assert not any(text in description for text in internal), (method, path)
        assert (
            "API key scope" in description
            or "Staff session only" in description
            or ("Any API key" in description)
        ), (method, path)
    communications = schema["paths"]["/api/v1/communications"]["post"]["description"]
    assert "API key scope: `communications:write`" in communications


def test_states_are_named_enums_that_say_which_are_final(schema):
    components = schema["components"]["schemas"]
    status = components["Communication"]["properties"]["status"]
    assert status == {"$ref": "#/components/schemas/CommunicationStatusEnum"}
    enum = components["CommunicationStatusEnum"]
    assert "cancelled" in enum["enum"]
    assert (
        "Final states (it never changes again): `rejected`, `actioned`, `cancelled`."
        in (enum["description"])
    )
    assert "`closed`" in components["CaseStateEnum"]["description"].split("Final states")[1]
    delivery = components["DeliveryStateEnum"]["description"]
    assert "Final states (it never changes again): `bounced`, `failed`." in delivery
    for name in ("TemplateVersionStateEnum", "PrintBatchStateEnum", "ReprintStateEnum"):
        assert "Final states" in components[name]["description"], name


def test_template_data_is_typed_as_an_object(schema):
    components = schema["components"]["schemas"]
    for component in ("CommunicationRequestRequest", "CorrespondenceCreateRequest"):
        assert components[component]["properties"]["data"]["type"] == "object", component
    assert components["PreviewRequestRequest"]["properties"]["data"]["type"] == "object"


@pytest.mark.parametrize(
    ("method", "path", "request_example"),
    [
        ("POST", "/api/v1/communications", True),
        ("GET", "/api/v1/communications", False),
        ("GET", "/api/v1/communications/{public_id}", False),
        ("POST", "/api/v1/communications/{public_id}/cancel", True),
        ("POST", "/api/v1/customers", True),
        ("GET", "/api/v1/customers/{ref}", False),
        ("PATCH", "/api/v1/customers/{ref}", True),
        ("POST", "/api/v1/webhooks", True),
        ("GET", "/api/v1/webhooks", False),
        ("PATCH", "/api/v1/webhooks/{id}", True),
        ("POST", "/api/v1/templates/{code}/preview", True),
    ],
)
def test_main_operations_carry_examples(schema, method, path, request_example):
    operation = schema["paths"][path][method.lower()]
    success = next(code for code in operation["responses"] if code.startswith("2"))
    assert operation["responses"][success]["content"]["application/json"]["examples"]
    if request_example:
        assert operation["requestBody"]["content"]["application/json"]["examples"]


def test_the_schema_is_valid_and_generates_without_warnings(db, tmp_path):
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml")
    )
