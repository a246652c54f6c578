"""gunicorn settings shared by `make run`, the Procfile on Elastic Beanstalk, and the tests.

Threaded workers (gthread), not sync. A sync worker serves one connection at a time and
blocks in recv() until that client has sent its whole request, so a handful of clients
that connect and say nothing (or trickle headers a byte a second) hold every worker until
`timeout` kills it, and the site is down meanwhile. A gthread worker parks idle
keep-alive connections, and new connections that have not sent anything yet, on a poller
instead of a thread; a thread is taken only once request bytes arrive, and a slow client
then holds one thread out of `workers * threads`, not a whole process. Elastic Beanstalk's
nginx buffers slow clients in front of gunicorn as well; this holds without it
(tests/torture/test_slow_clients.py, figures in docs/reliability.md).

Several processes, so a crash (kill -9) of one leaves the others serving while the
master forks a replacement. The app is thread-safe: the link store's writes take an
exclusive flock per request, which excludes threads of the same process too.

Every value can be overridden with GUNICORN_* environment variables.
"""
import multiprocessing
import os

from gunicorn.http import wsgi  # type: ignore[import-untyped]

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("GUNICORN_WORKERS", str(max(2, multiprocessing.cpu_count() + 1))))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
# Request threads per worker: the number of slow uploads or stuck lock waits one process
# absorbs before it queues requests.
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Open connections per worker (gthread): idle keep-alive ones beyond this are not accepted.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# A worker whose main loop stops for this long is killed and replaced. Requests never
# wait longer than LOCK_TIMEOUT (5 s) for the store, so 30 s only catches a hung process.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
# Idle keep-alive connections are closed after this many seconds (nginx reconnects).
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# gunicorn's defaults, stated: a request line over 4094 bytes, more than 100 header
# fields, or a header over 8190 bytes is refused with 400 before the app runs.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# GUNICORN_ACCESSLOG="" turns the access log off (the tests do, to keep their logs short).
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
errorlog = "-"
# gunicorn's runtime control socket (gunicornc: reload, shutdown, resize) is not used here;
# off, so nothing can manage the server through a socket in $HOME, and several servers on
# one machine (the tests) do not fight over the same socket path.
control_socket_disable = True

# Do not advertise the server software. gunicorn writes "Server: gunicorn" into every
# response and has no setting to leave it out (benoitc/gunicorn#825, closed); its
# Response builds that line in default_headers(), so the line is dropped there.
_gunicorn_default_headers = wsgi.Response.default_headers


def _default_headers_without_server(response: object) -> list[str]:
    headers: list[str] = _gunicorn_default_headers(response)
    return [line for line in headers if not line.lower().startswith("server:")]


wsgi.Response.default_headers = _default_headers_without_server
