"""Intake of the shared Gmail inbox into requests and cases."""
