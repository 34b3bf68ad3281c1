"""Settings for bench/dispatch.py: the project's settings plus django-post-office, which the
benchmark measures CCM's bulk dispatch against (it is not part of the project)."""

from ccm.settings import *  # noqa: F403
from ccm.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]
POST_OFFICE = {
    # The same Anymail backend (pointed at the same loopback stub) CCM sends through.
    "BACKENDS": {"default": "anymail.backends.postmark.EmailBackend"},
    "DEFAULT_PRIORITY": "medium",
    "LOG_LEVEL": 1,  # errors only, as a production setup would
}
# Nothing else of the project's is set again here: a default copied into this file outlives a
# change of the project's own (CCM_BULK_CHUNK stayed 250 here after the project's became 500).
