"""Signals the documents app sends to higher layers (they connect in their AppConfig.ready())."""

from __future__ import annotations

from django.dispatch import Signal

# A document could not be composed: kwargs version, data, error (CompositionError with
# .reason and .errors). Cases open an exception from it.
composition_failed = Signal()

# Re-rendering an archived document gave other bytes: kwargs document, check.
regeneration_mismatch = Signal()
