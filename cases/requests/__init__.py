"""Reprint and correspondence requests: models, services, screens, API, approval by email."""
