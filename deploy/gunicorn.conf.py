"""gunicorn settings for CCM's web processes; every value comes from the environment.

    gunicorn -c deploy/gunicorn.conf.py          # or: python manage.py run_ccm --production

WEB_CONCURRENCY      worker processes (default: 2 x cores + 1, gunicorn's own advice)
GUNICORN_THREADS     threads per worker (default 4: requests mostly wait on PostgreSQL)
GUNICORN_TIMEOUT     seconds a silent worker may take before it is killed and replaced (default 60)
GUNICORN_GRACEFUL_TIMEOUT  seconds a worker gets to finish its requests on reload/stop (default 30)
GUNICORN_KEEPALIVE   seconds to hold an idle keep-alive connection behind the load balancer (5)
GUNICORN_MAX_REQUESTS  recycle a worker after this many requests (default 2000, jittered)
BIND                 address to listen on (default 0.0.0.0:$PORT, PORT defaults to 8000)

A HUP signal reloads gracefully: new workers start with the new code, old ones finish their
requests within the graceful timeout. The access log is one JSON object a line on stdout, so the
log shipper reads it like the application's own JSON logs (same request id).
"""

from __future__ import annotations

import multiprocessing
import os

wsgi_app = "ccm.wsgi:application"
bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
# gthread: a slow client or a slow PDF download holds a thread, not a whole process.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "2000"))
max_requests_jitter = max_requests // 10
# Load the application in each worker, not the master: a HUP then picks up new code.
preload_app = False
# The proxy in front terminates TLS and says so in X-Forwarded-Proto (SECURE_PROXY_SSL_HEADER).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# One JSON object a line, carrying the request id RequestIdMiddleware echoed.
logger_class = "ccm.observability.GunicornJsonLogger"
