"""What this site accepts as a short code and as a link's URL: the one place for the rules.

The web app (``application.py``) checks every create with them, and the operator's
import (``ops.linkformats``) checks every row of a file with them, so a link that comes
in through a file is one the form would have taken. No Flask here: importing the web
module builds the app, which an operator's command must not do.

``RESERVED_CODES`` are the first path segments of the app's own routes: a short code
must never shadow one. The app also reserves every route it has (``create_app``), and
tests/test_ops_links_import.py fails when one is missing here, where the import reads them.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import urlsplit

from werkzeug.urls import iri_to_uri

CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_URL_LENGTH = 2048
# Lower case.
RESERVED_CODES = frozenset({"api", "healthz", "manage", "report", "static", "your-url"})


class InvalidInput(Exception):
    """A request that cannot be stored, with the field and a message to act on."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def checked_url(url: str) -> str:
    """The URL as it will be stored and sent in Location, or InvalidInput saying why not."""
    if not url:
        raise InvalidInput("url", "Enter the URL to shorten.")
    if " " in url or not url.isprintable():
        raise InvalidInput("url", "A URL cannot contain spaces or control characters; "
                                  "remove them and try again.")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a malformed port
        stored = iri_to_uri(url)  # the ASCII form a Location header carries
        if " " in stored or not stored.isprintable():  # IDNA maps e.g. "¨" to " \u0308"
            raise ValueError(stored)
    except ValueError:
        raise InvalidInput("url", "That is not a valid URL; check it and try again.") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput("url", "Only http:// and https:// links can be shortened, "
                                  "e.g. https://example.com/page.")
    if not parts.hostname:
        raise InvalidInput("url", "That URL has no host name, e.g. https://example.com/page.")
    if len(stored) > MAX_URL_LENGTH:
        raise InvalidInput("url", f"That URL is {len(stored):,} characters long; the limit "
                                  f"is {MAX_URL_LENGTH:,}.")
    return stored


def checked_code(code: str, reserved: Collection[str] = RESERVED_CODES) -> str | None:
    """The chosen short name, None for a random one, or InvalidInput saying why not."""
    if not code:
        return None
    if not CODE_PATTERN.fullmatch(code):
        raise InvalidInput("code", "A short name is 1 to 64 letters, digits, '-' or '_' "
                                   "(no spaces, slashes or accents).")
    if code.lower() in reserved:
        raise InvalidInput("code", f"'{code}' is used by the site itself; choose another "
                                   "short name.")
    return code
