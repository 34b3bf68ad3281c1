"""Customers: push devices and the asset tree that serves customers (meter → transformer →
feeder → region). Customer, contact point, preference, consent and suppression writes are still in
notifications/pipeline/services.py (to be moved here when that module is split)."""
