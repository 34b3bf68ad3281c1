"""Operational and IoT events become incidents: intake, grouping, affected customers, notices."""
