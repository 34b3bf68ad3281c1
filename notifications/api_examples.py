"""Examples in the OpenAPI schema of the customer and communication operations: what an
integrator can copy (requests) and expect (responses). Kept apart from the views they document."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample

CUSTOMER_WRITE_EXAMPLE = OpenApiExample(
    "A customer with an email address and a mobile number",
    request_only=True,
    value={
        "external_ref": "CUST-1001",
        "source_system": "billing",
        "name": "Ada Lovelace",
        "language": "en",
        "postal_address": ["1 Analytical Row", "London", "N1 1AA"],
        "emails": ["ada@example.org"],
        "phones": ["+447700900123"],
    },
)
CUSTOMER_EXAMPLE = OpenApiExample(
    "A customer",
    response_only=True,
    value={
        "source_system": "billing",
        "external_ref": "CUST-1001",
        "name": "Ada Lovelace",
        "language": "en",
        "postal_address": ["1 Analytical Row", "London", "N1 1AA"],
        "postal_address_valid": True,
        "contacts": [
            {
                "kind": "email",
                "value": "ada@example.org",
                "is_primary": True,
                "valid": True,
                "invalid_reason": "",
            },
            {
                "kind": "phone",
                "value": "+447700900123",
                "is_primary": True,
                "valid": True,
                "invalid_reason": "",
            },
        ],
        "created_at": "2026-05-01T09:30:00Z",
        "updated_at": "2026-05-01T09:30:00Z",
    },
)
COMMUNICATION_REQUEST_EXAMPLE = OpenApiExample(
    "A payment reminder",
    request_only=True,
    value={
        "template": "payment_reminder",
        "customer": "CUST-1001",
        "source_system": "billing",
        "data": {
            "account_number": "NW-3310-0457",
            "reference": "PR-2026-04-0009931",
            "document_date": "2026-04-01",
            "amount_due": 288.59,
            "original_due_date": "2026-03-25",
            "statement_reference": "ST-2026-02-0051907",
            "pay_by": "2026-04-11",
        },
        "urgency": "normal",
        "correlation_id": "invoice-88123",
    },
)
COMMUNICATION_ACCEPTED_EXAMPLE = OpenApiExample(
    "Accepted",
    response_only=True,
    status_codes=["202"],
    value={
        "id": "3f6c2a9e-8d41-4b7a-9c15-0e2d7b6a4711",
        "status": "received",
        "url": "https://ccm.example/api/v1/communications/3f6c2a9e-8d41-4b7a-9c15-0e2d7b6a4711",
    },
)
COMMUNICATION_EXAMPLE_VALUE = {
    "id": "3f6c2a9e-8d41-4b7a-9c15-0e2d7b6a4711",
    "status": "delivered",
    "template": "payment_reminder",
    "template_version": 3,
    "customer": "CUST-1001",
    "category": "transactional",
    "urgency": "normal",
    "source": "api",
    "correlation_id": "invoice-88123",
    "created_at": "2026-04-01T08:00:00Z",
    "sent_at": "2026-04-01T08:00:07Z",
    "viewed_at": None,
    "actioned_at": None,
    "failure_reason": "",
    "failure_errors": [],
}
COMMUNICATION_EXAMPLE = OpenApiExample(
    "A delivered reminder", response_only=True, value=COMMUNICATION_EXAMPLE_VALUE
)
COMMUNICATION_DETAIL_EXAMPLE = OpenApiExample(
    "A reminder delivered by email",
    response_only=True,
    value={
        **COMMUNICATION_EXAMPLE_VALUE,
        "decision_trace": [
            {"channel": "email", "eligible": True, "reason": "preferred channel"},
            {"channel": "email", "decision": "chosen", "address": "ada@example.org"},
        ],
        "deliveries": [
            {
                "id": 9120,
                "channel": "email",
                "address": "ada@example.org",
                "state": "delivered",
                "message_id": "<ccm.4711.0.email.5d0c9a1e3b7f2a64c8e1d9b0@ccm.example>",
                "provider_message_id": "0100018f-1c2b",
                "attempts": 1,
                "last_error": "",
                "sent_at": "2026-04-01T08:00:07Z",
                "meta": {},
                "events": [
                    {
                        "event_type": "delivered",
                        "provider": "postmark",
                        "occurred_at": "2026-04-01T08:00:09Z",
                        "description": "",
                    }
                ],
            }
        ],
        "documents": [
            {
                "id": "b81e4c07-52aa-4f3e-a6d9-1c9e0f7d3301",
                "sha256": "9f2c…",
                "pdf_url": "https://ccm.example/api/v1/documents/b81e4c07-52aa-4f3e-a6d9-1c9e0f7d3301/pdf",
            }
        ],
        "timeline": [
            {
                "at": "2026-04-01T08:00:00Z",
                "action": "communication.requested",
                "actor": "api:billing",
                "detail": {},
            }
        ],
        "consent_applied": [],
    },
)
CANCEL_EXAMPLE = OpenApiExample(
    "Cancel a reminder the customer has already paid",
    request_only=True,
    value={"reason": "Paid at the branch on 2 April"},
)
CANCELLED_EXAMPLE = OpenApiExample(
    "Cancelled",
    response_only=True,
    value={**COMMUNICATION_EXAMPLE_VALUE, "status": "cancelled", "sent_at": None},
)
