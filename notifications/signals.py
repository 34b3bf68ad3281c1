"""Signals the notifications app sends to higher layers (cases connects in its ready())."""

from __future__ import annotations

from django.dispatch import Signal

# A delivery failed for good (permanent provider error, hard bounce, exhausted retries):
# kwargs delivery, reason.
delivery_failed = Signal()

# No channel is left to reach the customer: kwargs communication, reason.
communication_undeliverable = Signal()

# Composition of a communication failed (bad data, template error): kwargs communication, reason.
communication_compose_failed = Signal()

# A follow-up rule ran out of reminders and the customer still has not viewed or actioned the
# communication: kwargs communication, rule (the template's follow-up rule), reason.
communication_escalated = Signal()

# A customer texted us something that is not a keyword (STOP, START, HELP), e.g. a reply to a
# reminder: kwargs phone (E.164), body, customers (those who have the number; may be empty),
# message_sid. Sent inside the transaction that records it.
sms_received = Signal()

# The pipeline moved many communications at once with one guarded UPDATE (a chunk), which
# django-fsm's post_transition does not see: kwargs ids (the communications moved), target
# (their new state). Sent inside the transaction that moves them.
communications_transitioned = Signal()

# Reconciliation gave up: the provider could not say, after CCM_RECONCILE_MAX_CHECKS checks,
# whether it got the message; the delivery is failed without a fallback (it may have arrived):
# kwargs delivery, reason. Sent inside the transaction that fails it.
delivery_outcome_unknown = Signal()

# A statement's bill, computed again from its stored inputs, is not the stored one (checked
# before every reprint): kwargs statement, document (its archived original, or None), reason.
statement_bill_mismatch = Signal()
