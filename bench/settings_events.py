"""Settings for bench/events.py: the project's settings with the outage rule's `group_wait` set
(BENCH_GROUP_WAIT, default 0), so the first notice is timed from the event, not from the wait, and
its `group_interval` (BENCH_GROUP_INTERVAL, default the rule's 1800).
CCM_INCIDENT_RULES is not read from the environment. Never used outside the benchmark."""

from ccm.settings import *  # noqa: F403
from ccm.settings import env

CCM_INCIDENT_RULES = {
    "power_outage": {
        "group_wait": env.int("BENCH_GROUP_WAIT", default=0),
        # The proof (--proof) sends its update wave right after the notice: no interval.
        "group_interval": env.int("BENCH_GROUP_INTERVAL", default=1800),
    }
}
