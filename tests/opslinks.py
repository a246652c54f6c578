"""Running ``python -m ops.links`` as an operator does: a separate process, with the
environment that names the app's store."""
from __future__ import annotations

import os
import subprocess  # nosec B404: runs python -m ops.links as an operator would
import sys
from collections.abc import Mapping
from pathlib import Path

from linkstore import is_postgres_url
from tests.servers import REPO


def links_command(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # nosec B603: this interpreter, an argument list
        [sys.executable, "-m", "ops.links", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False, env={**os.environ, **env})


def environment_of(location: str, uploads: Path) -> dict[str, str]:
    """The app's settings for the store at location (a file:// or postgresql:// URL)."""
    if is_postgres_url(location):
        return {"DATABASE_URL": location, "UPLOAD_DIR": str(uploads)}
    return {"URLS_FILE": location.removeprefix("file://"), "UPLOAD_DIR": str(uploads)}
