"""Mandatory-notice campaigns: segments of customers, campaigns signed off on their exact
audience, sent through the one pipeline
(`notifications.pipeline.intake.communications_intake`), and the evidence pack that proves what was
sent to whom."""
