"""gunicorn settings shared by `make run`, the Procfile on Elastic Beanstalk, and the tests.

Sync workers, because Elastic Beanstalk's nginx buffers slow clients and whole requests
before gunicorn sees them; several workers so a crash of one leaves the rest serving.
Every value can be overridden with GUNICORN_* environment variables.
"""
import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("GUNICORN_WORKERS", str(max(2, multiprocessing.cpu_count() + 1))))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = "-"
