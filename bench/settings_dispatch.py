"""Settings for bench/dispatch.py: the project's settings plus django-post-office, which the
benchmark measures CCM's bulk dispatch against (it is not part of the project)."""

from ccm.settings import *  # noqa: F403
from ccm.settings import INSTALLED_APPS, env

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]
POST_OFFICE = {
    # The same Anymail backend (pointed at the same loopback stub) CCM sends through.
    "BACKENDS": {"default": "anymail.backends.postmark.EmailBackend"},
    "DEFAULT_PRIORITY": "medium",
    "LOG_LEVEL": 1,  # errors only, as a production setup would
}
CCM_POSTMARK_BATCH = env.int("CCM_POSTMARK_BATCH", default=500)
