"""Settings for bench/api.py: the project's settings with a bench-only URL in front of the
project's own, the bare view the API is measured against. Never used outside the benchmark."""

from ccm.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls_api"
