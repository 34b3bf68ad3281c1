"""The agent and operations screens (server-rendered): cases, exceptions, customers."""
