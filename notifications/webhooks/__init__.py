"""Integrator webhooks (subscriptions, outbox, sender) and the provider webhook endpoints."""
