"""A bare WSGI callable returning a constant redirect: gunicorn's floor without Flask.

It sends the same status, headers and body that Flask's `redirect()` sends, so the
difference to the Flask floor is the framework's own cost.
"""
from collections.abc import Callable, Iterable
from typing import Any

LOCATION = "https://example.com/"
BODY = (
    '<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n'
    '<p>You should be redirected automatically to the target URL: '
    f'<a href="{LOCATION}">{LOCATION}</a>. If not, click the link.\n'
).encode()
HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Length", str(len(BODY))),
    ("Location", LOCATION),
]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answer every request with a 302 to LOCATION."""
    start_response("302 FOUND", HEADERS)
    return [BODY]
