"""The pipeline every communication goes through: intake, compose, gate, dispatch, recovery,
channel selection, fallback, follow-ups, the provider throttle, delivery transitions, history."""
