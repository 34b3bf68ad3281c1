"""Customers: push devices and the asset tree that serves customers (meter → transformer →
feeder → region), and the customer, contact point, preference, consent and suppression writes
(`services.py`)."""
