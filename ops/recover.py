"""Put a snapshot back, then create again every link written since: the way back from a
release that wrote data the last good version cannot read (failure class E in
docs/deploying.md, "Choosing the deployment policy").

    python -m ops.recover SNAPSHOT --url http://127.0.0.1 [--timeout 10] [--deadline 600]

Run it where the link store is (an instance, through SSM; the local target's data
directory), with the app's DATA_DIR / URLS_FILE / UPLOAD_DIR, while the version that
must read the store serves --url:

1. `python -m ops.backup restore --force SNAPSHOT`: the snapshot's urls.json becomes the
   live one, under the store's lock; the file it replaces is kept beside it
   (urls.json.replaced-<time>) and missing uploads come back;
2. every link that kept file holds and the snapshot does not is created again through
   the serving version's own API, so that it is written in the format that version
   reads: a URL by POST /api/links {"url", "code"}, an uploaded file through the home
   page's form with its bytes from the upload directory. A code that exists again
   already, pointing at the same URL, counts as back.

What this generic replay cannot bring back, and says so (exit 1, each code with why):
a record without a plain "url" or "file" (a new version that renamed or restructured
fields: only a migration written for that change can read it), a file whose bytes are
gone, and anything the serving version refuses (a code or URL it does not accept).
Fields the create API does not take are not replayed either: created_at becomes the
time of the replay, and whatever else the new version stored beside a link (a visit
count, an expiry it added) is lost. The kept file stays for a person to look at.

Prints one line per link, then a JSON summary as its last line. Exit status: 0 every
link came back, 1 the restore failed or some link did not come back, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess  # nosec B404 - runs python -m ops.backup, as an operator would
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from linkstore import data_paths
from ops.smoke import CSRF_FIELD, Response, SmokeFailure, Visitor

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_RETRY_WAIT = 60.0  # seconds: the longest a Retry-After is honoured


class RecoveryError(Exception):
    """The recovery cannot go on; the message says why."""


@dataclass
class Recovery:
    snapshot: str
    restored_links: int = 0
    kept: str | None = None
    replayed: list[str] = field(default_factory=list)
    not_replayed: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        wanted = len(self.replayed) + len(self.not_replayed)
        text = (f"restored {self.snapshot} ({self.restored_links} links); created again "
                f"{len(self.replayed)} of the {wanted} link(s) written since")
        if self.not_replayed:
            missing = sorted(self.not_replayed.items())[:10]
            text += ("; NOT back: " + ", ".join(f"{code} ({why})" for code, why in missing)
                     + f"; the replaced store is kept as {self.kept}")
        return text


def store_paths() -> tuple[Path, Path]:
    """(urls file, upload directory), from the environment as the app reads them."""
    return data_paths(os.environ.get)[1:]


def restore(snapshot: str) -> dict[str, Any]:
    """python -m ops.backup restore --force SNAPSHOT; its JSON answer."""
    done = subprocess.run(  # nosec B603
        [sys.executable, "-m", "ops.backup", "restore", "--force", snapshot],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RecoveryError(f"python -m ops.backup restore failed: "
                            f"{(done.stderr or done.stdout).strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def read_links(path: Path) -> dict[str, Any]:
    links = json.loads(path.read_bytes())
    if not isinstance(links, dict):
        raise RecoveryError(f"{path} is not a JSON object of links")
    return links


class Replay:
    """Creates links again through the serving version, as its own clients would."""

    def __init__(self, base_url: str, timeout: float, deadline: float,
                 upload_dir: Path) -> None:
        self.visitor = Visitor(base_url, timeout)
        self.deadline = time.monotonic() + deadline
        self.upload_dir = upload_dir

    def link(self, code: str, record: Any) -> str:
        """Create `code` again; return "" when it is back, else why not."""
        if not isinstance(record, dict):
            return "not a link record"
        if isinstance(record.get("url"), str):
            return self._until_done(lambda: self.visitor.post_json(
                "/api/links", {"url": record["url"], "code": code}), 201, code, record)
        if isinstance(record.get("file"), str):
            return self._file(code, record)
        return f"no plain url or file in {sorted(record)}: only a migration can read it"

    def _file(self, code: str, record: dict[str, Any]) -> str:
        path = self.upload_dir / Path(record["file"]).name
        if not path.is_file():
            return f"the uploaded file {path} is gone"
        name = record.get("name") if isinstance(record.get("name"), str) else path.name

        def submit() -> Response:
            page = self.visitor.get("/")
            token = CSRF_FIELD.search(page.text)
            if token is None:
                return page
            return self.visitor.post_form("/your-url", {"csrf_token": token.group(1),
                                                        "code": code},
                                          (str(name), path.read_bytes()))
        return self._until_done(submit, 200, code, record)

    def _until_done(self, send: Callable[[], Response], success: int, code: str,
                    record: dict[str, Any]) -> str:
        """Send until it succeeds; wait out a 429 (Retry-After) until the deadline."""
        while True:
            try:
                resp = send()
            except SmokeFailure as err:
                return f"no answer: {err}"
            if resp.status == success:
                return ""
            if resp.status == 409:
                return self._same_link(code, record)
            wait = min(float(resp.headers.get("Retry-After") or 5), MAX_RETRY_WAIT)
            if resp.status != 429 or time.monotonic() + wait > self.deadline:
                return f"HTTP {resp.status}: {resp.text[:200]}"
            time.sleep(wait)

    def _same_link(self, code: str, record: dict[str, Any]) -> str:
        """A 409: the code exists; it is back if it points where the record did."""
        try:
            resp = self.visitor.get(f"/api/links/{code}")
            body = resp.json() if resp.status == 200 else {}
        except SmokeFailure as err:
            return f"exists, and could not be read: {err}"
        if "url" in record and isinstance(body, dict) and body.get("url") == record["url"]:
            return ""
        if "file" in record and isinstance(body, dict) and "file" in body:
            return ""
        return f"the code is taken by another link ({body})"


def recover(snapshot: str, base_url: str, timeout: float, deadline: float) -> Recovery:
    urls_file, upload_dir = store_paths()
    restored = restore(snapshot)
    result = Recovery(str(restored.get("snapshot", snapshot)), int(restored.get("links", 0)),
                      restored.get("replaced_file_kept_as"))
    if not result.kept:
        return result
    written_since = {code: record for code, record in read_links(Path(result.kept)).items()
                     if code not in read_links(urls_file)}
    replay = Replay(base_url, timeout, deadline, upload_dir)
    for code, record in sorted(written_since.items()):
        why = replay.link(code, record)
        print(f"{'ok    ' if not why else 'FAIL  '}{code}{': ' + why if why else ''}",
              flush=True)
        if why:
            result.not_replayed[code] = why
        else:
            result.replayed.append(code)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.recover",
        description="Restore a snapshot of the link store, then create again, through the "
                    "serving version's API, every link written since.",
        epilog="Exit status: 0 every link came back, 1 the restore failed or some link did "
               "not, 2 bad arguments.")
    parser.add_argument("snapshot", help="the snapshot to restore (DEST/NAME, as "
                                         "python -m ops.backup names it)")
    parser.add_argument("--url", required=True,
                        help="base URL of the version that must read the store, e.g. "
                             "http://127.0.0.1 on an instance")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds allowed for each HTTP request (default 10)")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="seconds after which a rate-limited link is given up "
                             "(default 600)")
    args = parser.parse_args(argv)
    try:
        result = recover(args.snapshot, args.url.rstrip("/"), args.timeout, args.deadline)
    except (RecoveryError, OSError, ValueError) as err:
        print(json.dumps({"ok": False, "summary": f"recovery failed: {err}"}))
        return EXIT_FAILED
    print(json.dumps({"ok": not result.not_replayed, "summary": result.summary,
                      "snapshot": result.snapshot, "replaced_file_kept_as": result.kept,
                      "replayed": result.replayed, "not_replayed": result.not_replayed}))
    return EXIT_FAILED if result.not_replayed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
