"""CCM settings: every deploy-time value comes from the environment.

The defaults give the embedded single-machine setup (SQLite, django-q2 ORM broker, local file
storage). With DEBUG off the process refuses to start without a real SECRET_KEY and ALLOWED_HOSTS.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from ccm import esp

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=True)

_DEV_SECRET_KEY = "dev-insecure-key-for-local-use-only-never-in-production"  # noqa: S105
SECRET_KEY = env.str("SECRET_KEY", default=_DEV_SECRET_KEY if DEBUG else "")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

if not DEBUG:
    if not SECRET_KEY or SECRET_KEY == _DEV_SECRET_KEY or len(SECRET_KEY) < 50:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set to a random value of at least 50 characters when DEBUG is off."
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must name the served hosts when DEBUG is off.")

INSTALLED_APPS = [
    "ccm.admin_site.CcmAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.forms",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "anymail",
    "ccm",
    "documents",
    "notifications",
    "cases",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "ccm.middleware.RequestIdMiddleware",
    "ccm.middleware.RequestMetricsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

if not DEBUG:
    # Static files are served by the app itself in production (runserver does it in DEBUG).
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "ccm.urls"
WSGI_APPLICATION = "ccm.wsgi.application"
ASGI_APPLICATION = "ccm.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "ccm.context_processors.work",
            ],
            # {{ x.state|state }} reads a state as words ("In review") on every page.
            "builtins": ["ccm.templatetags.ccm_states"],
        },
    },
]

# Widgets render through TEMPLATES, so templates/ can fix one (admin/widgets/split_datetime.html).
FORM_RENDERER = "django.forms.renderers.TemplatesSetting"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'ccm.sqlite3'}"),
}
DATABASES["default"].setdefault("ATOMIC_REQUESTS", False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and a busy timeout let the web server and the task cluster share one SQLite file.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE"}
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # The same backend, its health check sending nothing on a quiet connection
        # (ccm/postgresql/base.py): no `SELECT 1` before each request's first query.
        DATABASES["default"]["ENGINE"] = "ccm.postgresql"
# The API intake's statements (an Idempotency-Key's claim and answer, the customer, the
# communication with its step) are prepared on each connection (ccm.rows.prepared_cursor).
# Off behind a pooler in transaction mode that cannot keep prepared statements (PgBouncer
# before 1.21, or without max_prepared_statements).
DB_PREPARED_STATEMENTS = env.bool("DB_PREPARED_STATEMENTS", default=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var" / "static")
MEDIA_ROOT = env.path("MEDIA_ROOT", default=BASE_DIR / "var" / "media")
MEDIA_URL = "media/"
# Where documents, print streams and case attachments live: the local disk (one machine), or
# S3-API object storage shared by every web process and cluster (STORAGE_BACKEND=s3). Objects
# are private and encrypted at rest; downloads are streamed through CCM's own permission-checked
# views, never by a public or pre-signed bucket URL (see docs/deployment.md).
STORAGE_BACKEND = env.str("STORAGE_BACKEND", default="filesystem")
if STORAGE_BACKEND not in ("filesystem", "s3"):
    raise ImproperlyConfigured("STORAGE_BACKEND must be 'filesystem' or 's3'.")
_default_storage: dict = {
    "BACKEND": env.str(
        "DEFAULT_STORAGE_BACKEND", default="django.core.files.storage.FileSystemStorage"
    )
}
if STORAGE_BACKEND == "s3":
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            # Empty: AWS itself; set for MinIO, Ceph, moto or another S3-API server.
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            # Empty: boto3's own chain (instance role, AWS_* environment, config files).
            "access_key": env.str("AWS_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default="") or None,
            "location": env.str("AWS_LOCATION", default=""),
            # Private objects (the bucket's policy decides; never a public-read ACL) ...
            "default_acl": None,
            # ... any URL the storage hands out is signed and short-lived ...
            "querystring_auth": True,
            "querystring_expire": env.int("AWS_QUERYSTRING_EXPIRE", default=300),
            # ... and every object is encrypted at rest by the server.
            "object_parameters": {"ServerSideEncryption": "AES256"},
            # An archived document is never overwritten: a second save gets a new name.
            "file_overwrite": False,
        },
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        # Hashed names (cache forever) and compressed copies; `collectstatic` builds them.
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage",
    },
}

# --- security (production values apply whenever DEBUG is off) ---------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# Audit checkpoints (ccm/audit_checkpoints.py) are HMAC-signed with a key the database never
# holds, so a truncated or rewritten chain cannot be re-signed. Rotate: put the new key in
# AUDIT_SIGNING_KEY and move the old one to AUDIT_SIGNING_KEYS_OLD (comma-separated) so the
# checkpoints it signed still verify.
_DEV_AUDIT_KEY = "dev-audit-signing-key-for-local-use-only-never-in-production"
AUDIT_SIGNING_KEY = env.str("AUDIT_SIGNING_KEY", default=_DEV_AUDIT_KEY if DEBUG else "")
AUDIT_SIGNING_KEYS_OLD = env.list("AUDIT_SIGNING_KEYS_OLD", default=[])
# The PAdES signature inside a campaign's evidence report (documents/signing.py): PEM paths of an
# RSA key and its certificate (issued by the organisation's CA, or a qualified trust service).
# In development (DEBUG) a self-signed pair is made once in CCM_EVIDENCE_SIGNING_DEV_DIR; in
# production without them the report is left unsigned and says so (the pack's HMAC still holds).
CCM_EVIDENCE_SIGNING_DEV_DIR = BASE_DIR / "var" / "evidence-signing"
CCM_EVIDENCE_SIGNING_KEY = env.str(
    "CCM_EVIDENCE_SIGNING_KEY",
    default=str(CCM_EVIDENCE_SIGNING_DEV_DIR / "key.pem") if DEBUG else "",
)
CCM_EVIDENCE_SIGNING_CERT = env.str(
    "CCM_EVIDENCE_SIGNING_CERT",
    default=str(CCM_EVIDENCE_SIGNING_DEV_DIR / "cert.pem") if DEBUG else "",
)
# How often the queue signs a checkpoint, and where each one is appended as a JSON line for the
# auditor (empty: the log line only).
AUDIT_CHECKPOINT_MINUTES = env.int("AUDIT_CHECKPOINT_MINUTES", default=10)
AUDIT_CHECKPOINT_EXPORT = env.str("AUDIT_CHECKPOINT_EXPORT", default="")

# --- email ------------------------------------------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="CCM <no-reply@ccm.localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
ANYMAIL = {
    "POSTMARK_SERVER_TOKEN": env.str("POSTMARK_SERVER_TOKEN", default=""),
    "POSTMARK_API_URL": env.str("POSTMARK_API_URL", default="https://api.postmarkapp.com/"),
    # Basic-auth "user:password" the ESP's tracking webhooks must present.
    "WEBHOOK_SECRET": env.str(
        "ANYMAIL_WEBHOOK_SECRET", default="ccm-dev:dev-webhook-secret" if DEBUG else ""
    ),
}
if not DEBUG and not ANYMAIL["WEBHOOK_SECRET"]:
    raise ImproperlyConfigured(
        "ANYMAIL_WEBHOOK_SECRET (user:password) must be set when DEBUG is off: without it anyone "
        "could post fake bounces and complaints to the tracking webhooks."
    )
# The ESPs whose tracking webhooks are mounted at /anymail/<esp>/tracking/: the one EMAIL_BACKEND
# sends through, or those listed (e.g. while moving from one ESP to another). No other ESP's
# endpoint exists, so nobody can post it a forged bounce.
CCM_TRACKING_ESPS = esp.tracking_esps(
    email_backend=EMAIL_BACKEND, explicit=env.list("CCM_TRACKING_ESPS", default=[])
)
# The signing keys of those that sign their webhooks (e.g. SENDGRID_TRACKING_WEBHOOK_
# VERIFICATION_KEY, MAILGUN_WEBHOOK_SIGNING_KEY); required in production, where an unverified
# webhook would take forged bounces.
for _key in esp.signing_keys(CCM_TRACKING_ESPS):
    if env.str(_key, default=""):
        ANYMAIL[_key] = env.str(_key)
    elif not DEBUG:
        raise ImproperlyConfigured(
            f"{_key} must be set when DEBUG is off: CCM_TRACKING_ESPS/EMAIL_BACKEND mount that "
            "ESP's tracking webhook, and without its key a forged bounce could not be told apart."
        )

# One cache shared by every process, for rate limits and throttles: the database by default
# (its table is made by a migration), Redis with CACHE_URL=rediscache://127.0.0.1:6379/1.
# A per-process memory cache would let each process count alone.
CACHES = {"default": env.cache_url("CACHE_URL", default="dbcache://ccm_cache")}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # The same backend, reusing its Redis client instead of building one per call (ccm/cache.py).
    CACHES["default"]["BACKEND"] = "ccm.cache.KeptClientRedisCache"
# Reverse proxies in front of CCM whose X-Forwarded-For is believed (addresses or networks,
# comma-separated). The client is the right-most address in it that is not one of them;
# without any, the client is the connecting address (REMOTE_ADDR), whatever a header says.
CCM_TRUSTED_PROXIES = env.list("CCM_TRUSTED_PROXIES", default=[])

# --- task queue (django-q2) -------------------------------------------------------------
# The defaults of django-q2 retry a failed task forever; these bound it. `retry` must exceed
# `timeout`, or a slow task is handed to a second worker while the first still runs it.
Q_CLUSTER = {
    "name": "ccm",
    "orm": "default",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": env.int("Q_TIMEOUT", default=120),
    "retry": env.int("Q_RETRY", default=180),
    "max_attempts": env.int("Q_MAX_ATTEMPTS", default=5),
    "ack_failures": True,
    # Successful tasks are not kept: with a positive limit django-q2's monitor locks and counts
    # every kept success row (SELECT … FOR UPDATE) after each task, so each task gets slower as
    # the table grows. Failed tasks are always kept, for operations to see.
    "save_limit": env.int("Q_SAVE_LIMIT", default=-1),
    "catch_up": False,
    "poll": 0.5,
    "label": "Task queue",
}
# Named queues (ccm.tasks.Queue), each served by its own clusters so that one kind of work
# never waits behind another: "render" (PDFs), "dispatch" (text composition, release gate,
# sending), "webhooks" (integrators' endpoints). Empty (the embedded default) runs everything
# on the one default queue; a deployment that names a queue must run a cluster for it
# (`run_ccm` starts one per queue; by hand `Q_CLUSTER_NAME=dispatch manage.py qcluster`).
CCM_TASK_QUEUES = env.list("CCM_TASK_QUEUES", default=[])
_unknown_queues = set(CCM_TASK_QUEUES) - {"render", "dispatch", "webhooks"}
if _unknown_queues:
    raise ImproperlyConfigured(
        f"CCM_TASK_QUEUES names {sorted(_unknown_queues)}: the queues are render, dispatch "
        "and webhooks."
    )
# Each queue's clusters are sized on their own (Q_<QUEUE>_WORKERS, default Q_WORKERS).
Q_CLUSTER["ALT_CLUSTERS"] = {
    queue: {"workers": env.int(f"Q_{queue.upper()}_WORKERS", default=Q_CLUSTER["workers"])}
    for queue in CCM_TASK_QUEUES
}
# Tests and `manage.py shell` may run tasks in-process.
Q_SYNC = env.bool("Q_SYNC", default=False)
if Q_SYNC:
    Q_CLUSTER["sync"] = True

# --- REST API ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "ccm.api.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "ccm.api.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "ccm.api.auth.SessionUserRateThrottle",
        "ccm.api.auth.ApiKeyRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("API_THROTTLE_ANON", default="60/min"),
        "user": env.str("API_THROTTLE_USER", default="1200/min"),
        "api_key": env.str("API_THROTTLE_API_KEY", default="6000/min"),
    },
    "EXCEPTION_HANDLER": "ccm.api.errors.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "ccm.api.schema.CcmAutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CCM API",
    "DESCRIPTION": (
        "Customer communications back-office. Authenticate with `Authorization: Api-Key <key>`. "
        "POST requests accept an `Idempotency-Key` header: the same key with the same body "
        "replays the stored response; with a different body it is refused with 422; while the "
        "first request is still running a second one gets 409. Errors are RFC 9457 problem "
        "details (`application/problem+json`).\n\n"
        "**Webhooks.** Subscribe a URL with `POST /api/v1/webhooks` (scope `webhooks:write`) to "
        "receive your communications' status events (see *communicationStatus* under "
        "webhooks). Each POST carries `CCM-Webhook-Id` (the event id: dedupe by it), "
        "`CCM-Webhook-Timestamp` (Unix seconds) and `CCM-Webhook-Signature: v1=<hex>`, the "
        "HMAC-SHA256 of `{timestamp}.{raw body}` keyed with the subscription's secret (shown "
        "once, when you subscribe). To verify, recompute it over the raw body bytes, compare in "
        "constant time with each `v1=` value, and refuse timestamps more than 5 minutes old. "
        "Answer 2xx within 5 s; anything else is retried with backoff for up to 24 hours."
    ),
    # 3.1: the first version with `webhooks`, where the events we POST are described.
    "OAS_VERSION": "3.1.0",
    "WEBHOOKS": ["notifications.webhooks.api.COMMUNICATION_STATUS_WEBHOOK"],
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI served from our own static files: the docs work offline and load no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # After the enums get their names: say which states of each state machine are final.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "ccm.api.schema.postprocess_final_states",
    ],
    # One name for a choice set used by fields of different names (category, categories).
    "ENUM_NAME_OVERRIDES": {
        "CategoryEnum": "documents.models.Category",
        "WebhookEventEnum": "notifications.models.webhooks.WebhookEvent",
        "ChannelEnum": "notifications.models.Channel",
        "CaseStateEnum": "cases.models.CaseState",
        "ResendChannelEnum": "notifications.pipeline.recovery.RESENDABLE_CHANNELS",
        "ReprintStateEnum": "cases.requests.models.ReprintState",
        "CorrespondenceStateEnum": "cases.requests.models.CorrespondenceState",
        "RequestSourceEnum": "cases.requests.models.RequestSource",
        "ReprintChannelEnum": ["email", "print"],
        "CommunicationSourceEnum": "notifications.models.Source",
        "CommunicationStatusEnum": "notifications.models.CommState",
        "ApprovalStateEnum": "ccm.models.ApprovalState",
        "DeliveryStateEnum": "notifications.models.DeliveryState",
        "DeliveryEventTypeEnum": "notifications.models.EventType",
        "ContactKindEnum": "notifications.models.ContactKind",
        "TemplateVersionStateEnum": "documents.models.VersionState",
    },
}
IDEMPOTENCY_KEY_TTL_HOURS = env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24)

# --- CCM --------------------------------------------------------------------------------
CCM_PUBLIC_BASE_URL = env.str("CCM_PUBLIC_BASE_URL", default="http://127.0.0.1:8000")
# Language of a template variant → the locale its money, numbers and dates are formatted in.
CCM_LOCALES = {
    "en": "en_GB",
    "de": "de_DE",
    "fr": "fr_FR",
    "nl": "nl_NL",
    "es": "es_ES",
    "cy": "cy_GB",
}
CCM_RENDER_TIMEOUT_S = env.float("CCM_RENDER_TIMEOUT_S", default=60.0)
CCM_RENDER_MEMORY_MB = env.int("CCM_RENDER_MEMORY_MB", default=1536)
# Limits of one email/SMS/push rendition (previews, proofs, the review page, the pipeline),
# composed in the same render worker; the memory is a budget on top of what the worker holds.
CCM_COMPOSE_TIMEOUT_S = env.float("CCM_COMPOSE_TIMEOUT_S", default=10.0)
CCM_COMPOSE_MEMORY_MB = env.int("CCM_COMPOSE_MEMORY_MB", default=256)
CCM_SWEEP_AFTER_SECONDS = env.int("CCM_SWEEP_AFTER_SECONDS", default=300)
CCM_DEFAULT_PHONE_REGION = env.str("CCM_DEFAULT_PHONE_REGION", default="GB")
# Channels with a working backend; selection only considers these.
CCM_ENABLED_CHANNELS = env.list("CCM_ENABLED_CHANNELS", default=["email", "sms", "push", "print"])
# The backend class of each channel (like EMAIL_BACKEND); a channel left out cannot send.
CCM_CHANNEL_BACKENDS = {
    "email": "notifications.channels.email.EmailBackend",
    "sms": "notifications.channels.sms.SmsBackend",
    "push": "notifications.channels.push.PushBackend",
    "print": "notifications.channels.print.PrintBackend",
}
# Fallback chain per category when a template declares none ("fallback" in template.json): a
# failed delivery moves on to the next channel. Marketing does not chase the customer.
CCM_FALLBACK_CHAINS = {
    "regulatory": ["email", "print"],
    "transactional": ["email", "sms", "print"],
    "service": ["email", "sms", "push", "print"],
    "marketing": [],
}
# The SMS provider (like EMAIL_BACKEND): ConsoleSmsBackend, LocmemSmsBackend or TwilioSmsBackend
# in notifications.channels.sms.
CCM_SMS_BACKEND = env.str("CCM_SMS_BACKEND", default="notifications.channels.sms.ConsoleSmsBackend")
TWILIO_ACCOUNT_SID = env.str("TWILIO_ACCOUNT_SID", default="")
# Authenticates our API calls and checks the signature on Twilio's webhooks.
TWILIO_AUTH_TOKEN = env.str("TWILIO_AUTH_TOKEN", default="")
# Send from a messaging service when one is set, else from this number.
TWILIO_MESSAGING_SERVICE_SID = env.str("TWILIO_MESSAGING_SERVICE_SID", default="")
TWILIO_FROM_NUMBER = env.str("TWILIO_FROM_NUMBER", default="")
TWILIO_API_BASE_URL = env.str("TWILIO_API_BASE_URL", default="https://api.twilio.com")
TWILIO_TIMEOUT_S = env.float("TWILIO_TIMEOUT_S", default=10.0)
if not DEBUG and CCM_SMS_BACKEND.endswith(".TwilioSmsBackend"):
    _missing = [
        name
        for name, value in (
            ("TWILIO_ACCOUNT_SID", TWILIO_ACCOUNT_SID),
            ("TWILIO_AUTH_TOKEN", TWILIO_AUTH_TOKEN),
            (
                "TWILIO_MESSAGING_SERVICE_SID or TWILIO_FROM_NUMBER",
                TWILIO_MESSAGING_SERVICE_SID or TWILIO_FROM_NUMBER,
            ),
        )
        if not value
    ]
    if _missing:
        raise ImproperlyConfigured(
            f"The Twilio SMS backend needs {', '.join(_missing)} when DEBUG is off: without "
            "them no SMS can be sent and no status callback can be verified."
        )
# How push leaves: console (make run), locmem (tests) or FCM HTTP v1 + Web Push. Production
# defaults to the real one, so a forgotten setting fails loudly instead of "sending" to a log.
CCM_PUSH_BACKEND = env.str(
    "CCM_PUSH_BACKEND",
    default="notifications.channels.push.ConsolePushBackend"
    if DEBUG
    else "notifications.channels.push.FcmWebPushBackend",
)
# A Firebase service account key (JSON); the project id comes from it unless given here.
CCM_FCM_CREDENTIALS_FILE = env.str("CCM_FCM_CREDENTIALS_FILE", default="")
CCM_FCM_PROJECT_ID = env.str("CCM_FCM_PROJECT_ID", default="")
# Web Push: the VAPID private key (PEM, or the path of a PEM file) and its contact (mailto:).
CCM_VAPID_PRIVATE_KEY = env.str("CCM_VAPID_PRIVATE_KEY", default="")
CCM_VAPID_SUBJECT = env.str("CCM_VAPID_SUBJECT", default="")
CCM_MESSAGE_ID_DOMAIN = env.str("CCM_MESSAGE_ID_DOMAIN", default="ccm.localhost")
# Seals the Message-IDs of deliveries (an HMAC), so that a bounce report naming a guessed one is
# refused. Empty: derived from SECRET_KEY (rotating either orphans bounces of mail in flight).
CCM_MESSAGE_ID_KEY = env.str("CCM_MESSAGE_ID_KEY", default="")
# Inbound mail (the Gmail intake) trusts only the Authentication-Results header that the
# receiving server stamps with this authserv-id; headers anyone else added are ignored.
CCM_INBOUND_AUTHSERV_ID = env.str("CCM_INBOUND_AUTHSERV_ID", default="mx.google.com")
# The mail system whose mailer-daemon/postmaster sends the receiving mailbox its bounces.
CCM_INBOUND_MAIL_SYSTEM_DOMAINS = env.list(
    "CCM_INBOUND_MAIL_SYSTEM_DOMAINS", default=["googlemail.com", "google.com"]
)
CCM_DISPATCH_INLINE_RETRIES = env.int("CCM_DISPATCH_INLINE_RETRIES", default=2)
CCM_DISPATCH_MAX_ATTEMPTS = env.int("CCM_DISPATCH_MAX_ATTEMPTS", default=8)
# A delivery in `sending` this long lost its worker; it is reconciled with the provider.
CCM_SENDING_STALE_AFTER_S = env.int("CCM_SENDING_STALE_AFTER_S", default=300)
# A delivery whose outcome the provider cannot tell after this many checks fails with
# "outcome unknown" (and an exception case) instead of waiting in `sending` for ever.
CCM_RECONCILE_MAX_CHECKS = env.int("CCM_RECONCILE_MAX_CHECKS", default=6)
# Messages per second each provider takes, shared by every process and cluster (a token
# bucket row per provider), e.g. "postmark=50,twilio=10"; a provider not named is not throttled.
# Provider names: the email backend's module (postmark, smtp, …), the SMS backend (twilio, …),
# push. Bulk traffic (marketing, service) leaves CCM_THROTTLE_RESERVE of each bucket to
# transactional and regulatory messages, so a campaign never starves them.
CCM_PROVIDER_RATES = {
    name.strip(): float(rate)
    for name, rate in (
        pair.split("=", 1) for pair in env.list("CCM_PROVIDER_RATES", default=[]) if "=" in pair
    )
}
CCM_THROTTLE_RESERVE = env.float("CCM_THROTTLE_RESERVE", default=0.2)
# A chunk waits at most this long for tokens; what is left goes back to `pending` for later.
CCM_THROTTLE_MAX_WAIT_S = env.float("CCM_THROTTLE_MAX_WAIT_S", default=30.0)
CCM_PORTAL_LINK_TTL_DAYS = env.int("CCM_PORTAL_LINK_TTL_DAYS", default=30)
CCM_PORTAL_RENEWAL_TEMPLATE = env.str("CCM_PORTAL_RENEWAL_TEMPLATE", default="document_ready")
CCM_COMPANY_NAME = env.str("CCM_COMPANY_NAME", default="Northwind Utilities & Insurance")
# Communications per queue row in the bulk path (DESIGN: a few hundred at most). A chunk has a
# fixed cost of its own (some forty statements, a task, a provider call): about 35 ms of a
# cluster's CPU, 0.14 ms a message at 250 and 0.07 at 500 (bench/figures.md). 500 is also what
# one Postmark batch call takes, so a chunk of emails is one call.
CCM_BULK_CHUNK = env.int("CCM_BULK_CHUNK", default=500)
# At most this many in a chunk that archives PDFs (a quarter of a second each, more on a busy
# machine): a render task stays well inside Q_TIMEOUT. A chunk's own cost is nothing beside it.
CCM_RENDER_CHUNK = env.int("CCM_RENDER_CHUNK", default=100)
# An unthrottled campaign hands this many pipeline chunks per hand-off (copied from the frozen
# audience in a few statements); each send task hands two, its successor queued between them.
CCM_CAMPAIGN_HANDOFF_CHUNKS = env.int("CCM_CAMPAIGN_HANDOFF_CHUNKS", default=2)
# A sending campaign no chunk has touched for this long lost its task: the sweep restarts it.
CCM_CAMPAIGN_STALL_AFTER = timedelta(seconds=env.int("CCM_CAMPAIGN_STALL_SECONDS", default=120))
# Messages per call to Postmark's batch endpoint (its limit is 500); 1 sends one call each.
CCM_POSTMARK_BATCH = env.int("CCM_POSTMARK_BATCH", default=500)
# Status webhooks to integrators (notifications/webhooks/send.py): each POST gets this long; a
# failing event is retried with backoff for this many hours or attempts, whichever ends first.
CCM_WEBHOOK_TIMEOUT_S = env.float("CCM_WEBHOOK_TIMEOUT_S", default=5.0)
CCM_WEBHOOK_RETRY_HOURS = env.float("CCM_WEBHOOK_RETRY_HOURS", default=24.0)
CCM_WEBHOOK_MAX_ATTEMPTS = env.int("CCM_WEBHOOK_MAX_ATTEMPTS", default=20)
# In production webhooks go to public https:// URLs only; private, loopback and reserved
# addresses (the cloud metadata endpoint, the database) are refused unless allowed here.
CCM_WEBHOOK_REQUIRE_HTTPS = env.bool("CCM_WEBHOOK_REQUIRE_HTTPS", default=not DEBUG)
CCM_WEBHOOK_ALLOW_PRIVATE = env.bool("CCM_WEBHOOK_ALLOW_PRIVATE", default=DEBUG)
# The Gmail gateway (notifications/channels/gmail.py): a service account key with domain-wide
# delegation and the mailbox it acts as.
GMAIL_SERVICE_ACCOUNT_FILE = env.str("GMAIL_SERVICE_ACCOUNT_FILE", default="") or None
GMAIL_DELEGATED_USER = env.str("GMAIL_DELEGATED_USER", default="") or None
# Which channel sends each kind of internal mail: "internal_alert=gmail,approval=gmail,
# report=esp". Unset: Gmail for all three when the gateway is configured, else the ESP
# (EMAIL_BACKEND; the console in `make run`), so a setup without Gmail still delivers them.
CCM_SENDER_PROFILE = env.dict(
    "CCM_SENDER_PROFILE",
    default=dict.fromkeys(
        ("internal_alert", "approval", "report"), "gmail" if GMAIL_SERVICE_ACCOUNT_FILE else "esp"
    ),
)
# The Django email backend that sends internal mail the sender profile routes to Gmail. In
# development without a service account (`make run`) it is the console, so approval mails and
# scheduled reports show in the terminal instead of failing.
CCM_GMAIL_EMAIL_BACKEND = env.str(
    "CCM_GMAIL_EMAIL_BACKEND",
    default="django.core.mail.backends.console.EmailBackend"
    if DEBUG and not env.str("GMAIL_SERVICE_ACCOUNT_FILE", default="")
    else "notifications.channels.gmail.GmailEmailBackend",
)

# --- cases ------------------------------------------------------------------------------
# SLA clocks count business days on this jurisdiction's calendar ("CC" or "CC-SUBDIV", public
# holidays from the `holidays` library) unless a case type names its own (cases/sla.py).
CASES_CALENDAR = env.str("CASES_CALENDAR", default="GB-ENG")
CASES_TIME_ZONE = env.str("CASES_TIME_ZONE", default="Europe/London")
# A case is flagged (and escalated once) when this many business days or fewer are left.
CASES_SLA_WARN_BUSINESS_DAYS = env.int("CASES_SLA_WARN_BUSINESS_DAYS", default=1)
CASES_SLA_SWEEP_MINUTES = env.int("CASES_SLA_SWEEP_MINUTES", default=15)
# Where each team's alerts go: "operations=ops@x.example;oncall@x.example,disputes=…". A team
# left out gets the email addresses of the active users holding its role.
CASES_ALERT_RECIPIENTS = env.dict("CASES_ALERT_RECIPIENTS", default={})
# Internal accounts (customer references) whose registered devices are the operations team's:
# a new severe incident is pushed to them as well as mailed (notifications.channels.internal).
CCM_OPS_PUSH_ACCOUNTS = env.list("CCM_OPS_PUSH_ACCOUNTS", default=[])
# Printed above the recipient on print cover sheets, so undeliverable letters come back to us.
CCM_PRINT_RETURN_ADDRESS = env.str("CCM_PRINT_RETURN_ADDRESS", default="")
# The mail house's control mark on every cover sheet, which its inserter reads to check that each
# envelope holds the right letter and number of pages (notifications/channels/printstream.py): "qr",
# "datamatrix", "omr" (a track of marks with the sequence and sheets) or "none"; the text a 2D
# code carries, also printed beside the mark (fields: batch, sequence, items, pages = the
# document's pages, sheets = pages in the envelope, the cover sheet included); and where it sits
# on the A4 cover sheet, "left,top,size" in millimetres (clear of the address window, 20-108 mm
# by 45-83 mm; for OMR, size is the length of a mark and the track runs 115 mm down from top).
CCM_PRINT_CONTROL_MARK = env.str("CCM_PRINT_CONTROL_MARK", default="qr")
CCM_PRINT_CONTROL_MARK_FORMAT = env.str(
    "CCM_PRINT_CONTROL_MARK_FORMAT", default="CCM1|{batch}|{sequence}|{items}|{sheets}"
)
CCM_PRINT_CONTROL_MARK_AT = env.str("CCM_PRINT_CONTROL_MARK_AT", default="170,12,24")
# Files staff attach to a case on the case screens (cases/web/forms.py checks their bytes).
CASES_ATTACHMENT_MAX_MB = env.int("CASES_ATTACHMENT_MAX_MB", default=10)
# Every postal address correction needs a second person (by default only one that a held
# regulated letter would follow does: cases/address_corrections.py).
CASES_ADDRESS_CORRECTION_FOUR_EYES = env.bool("CASES_ADDRESS_CORRECTION_FOUR_EYES", default=False)
# Reprints and correspondence (cases/requests/reprints.py, cases/requests/correspondence.py): the
# channels a reprint may go out on (a duplicate needs a durable medium that carries the document).
CASES_REPRINT_CHANNELS = env.list("CASES_REPRINT_CHANNELS", default=["email", "print"])
# How long an approval mail's reply token lives (a reply of APPROVE / REJECT redeems it once).
CASES_APPROVAL_REPLY_TTL_HOURS = env.int("CASES_APPROVAL_REPLY_TTL_HOURS", default=72)
# The Gmail intake of the shared mailbox (cases/inbox/intake.py): how often, and how many per run.
CASES_GMAIL_INTAKE_MINUTES = env.int("CASES_GMAIL_INTAKE_MINUTES", default=5)
CASES_GMAIL_INTAKE_BATCH = env.int("CASES_GMAIL_INTAKE_BATCH", default=100)

# --- retention ----------------------------------------------------------------------------
# Days a document (and the data it was rendered from) is kept, per category; the daily purge
# (cases/retention.py) removes what is older, unless a legal hold covers it. Seven years for
# what a regulator may ask about; every category must be listed.
CCM_RETENTION_DAYS = env.dict(
    "CCM_RETENTION_DAYS",
    cast={"value": int},
    default={"regulatory": 2555, "transactional": 2555, "service": 730, "marketing": 365},
)
if set(CCM_RETENTION_DAYS) != {"regulatory", "transactional", "service", "marketing"}:
    raise ImproperlyConfigured(
        "CCM_RETENTION_DAYS must give days for regulatory, transactional, service and marketing."
    )

# Categories kept by law for their retention period even when the customer asks for erasure
# (e.g. statements and contract notices): the erasure is deferred until the last one expires.
CCM_ERASURE_KEEPS = env.list("CCM_ERASURE_KEEPS", default=["regulatory", "transactional"])
if not set(CCM_ERASURE_KEEPS) <= set(CCM_RETENTION_DAYS):
    raise ImproperlyConfigured(
        "CCM_ERASURE_KEEPS names categories of CCM_RETENTION_DAYS: regulatory, transactional, "
        "service, marketing."
    )

# --- logs and errors ---------------------------------------------------------------------
# json: one object a line with the request id (and communication/delivery ids where bound),
# for a log shipper; plain: for a terminal. Production defaults to json.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain" if DEBUG else "json")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured("LOG_FORMAT must be 'json' or 'plain'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "ccm.observability.ContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "ccm.observability.json_formatter_factory"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # WeasyPrint logs every layout step at INFO and harmless CSS notes at WARNING.
        "weasyprint": {"level": "ERROR"},
        "fontTools": {"level": "WARNING"},
    },
}

# --- Cluster health, dashboard, reports, metrics -------------------------------------------
# /healthz answers 503 when the task cluster has not picked up due work within these bounds: the
# newest heartbeat (a task scheduled every minute) is older, or a queued task has been due longer.
CCM_HEALTH_HEARTBEAT_MAX_AGE_S = env.int("CCM_HEALTH_HEARTBEAT_MAX_AGE_S", default=180)
CCM_HEALTH_DUE_TASK_MAX_AGE_S = env.int("CCM_HEALTH_DUE_TASK_MAX_AGE_S", default=300)
# A task-cluster host whose heartbeat and last task are both older than this is flagged stale on
# /healthz and the dashboard (every host's workers poll the shared queue, which the schedules
# feed several tasks a minute, so a live host runs some within minutes); a host silent for longer
# than CCM_HEALTH_HOST_FORGET_AFTER_S is forgotten (taken out of service).
CCM_HEALTH_HOST_STALE_AFTER_S = env.int("CCM_HEALTH_HOST_STALE_AFTER_S", default=300)
CCM_HEALTH_HOST_FORGET_AFTER_S = env.int("CCM_HEALTH_HOST_FORGET_AFTER_S", default=86400)
# run_ccm probes its cluster this often (a heartbeat task) and restarts the cluster when a probe
# has not run within CCM_WATCHDOG_STALE_AFTER_S: longer than a task may take (Q_TIMEOUT), so
# workers busy with long tasks are not mistaken for a wedged cluster.
CCM_WATCHDOG_INTERVAL_S = env.float("CCM_WATCHDOG_INTERVAL_S", default=20.0)
CCM_WATCHDOG_STALE_AFTER_S = env.float(
    "CCM_WATCHDOG_STALE_AFTER_S", default=Q_CLUSTER["timeout"] + 60
)
# Mailbox providers' limits, drawn as lines on the dashboard (Gmail/Yahoo bulk-sender rules).
CCM_COMPLAINT_RATE_LIMIT = env.float("CCM_COMPLAINT_RATE_LIMIT", default=0.001)
CCM_BOUNCE_RATE_LIMIT = env.float("CCM_BOUNCE_RATE_LIMIT", default=0.02)
# A report run whose attempt fails (storage, rendering, the mail gateway…) is tried again after
# CCM_REPORT_RETRY_BASE_S, doubling up to CCM_REPORT_RETRY_MAX_S, until this many attempts failed.
CCM_REPORT_RUN_ATTEMPTS = env.int("CCM_REPORT_RUN_ATTEMPTS", default=3)
CCM_REPORT_RETRY_BASE_S = env.int("CCM_REPORT_RETRY_BASE_S", default=120)
CCM_REPORT_RETRY_MAX_S = env.int("CCM_REPORT_RETRY_MAX_S", default=3600)
# Reconciliation calls an item in progress longer than this stuck.
CCM_STUCK_AFTER_S = env.int("CCM_STUCK_AFTER_S", default=3600)
# /metrics: scraped with "Authorization: Bearer <token>"; staff sessions may read it too.
CCM_METRICS_TOKEN = env.str("CCM_METRICS_TOKEN", default="")

# Checked last, so that the other production checks above report first.
if not DEBUG and (
    not AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY == _DEV_AUDIT_KEY or len(AUDIT_SIGNING_KEY) < 32
):
    raise ImproperlyConfigured(
        "AUDIT_SIGNING_KEY must be set to a random value of at least 32 characters when DEBUG is "
        "off: without it a truncated audit chain cannot be told from a complete one."
    )

# Unhandled errors of web requests and tasks go to Sentry when a DSN is set (and only then).
SENTRY_DSN = env.str("SENTRY_DSN", default="")
if SENTRY_DSN:
    from ccm.observability import sentry_init

    sentry_init(
        dsn=SENTRY_DSN,
        environment=env.str("SENTRY_ENVIRONMENT", default="development" if DEBUG else "production"),
        release=env.str("SENTRY_RELEASE", default=""),
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
    )
