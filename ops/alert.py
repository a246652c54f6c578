"""Send an alert to a Slack-compatible incoming webhook.

    python -m ops.alert "Release abc123 to prod rolled back"

The URL comes from the environment variable ALERT_WEBHOOK_URL (a GitHub secret in the
workflows). When it is unset nothing is sent and that is not an error: local runs and
tests stay quiet. The payload is {"text": ...}, which Slack, Mattermost, Rocket.Chat and
most chat tools accept. Sending never raises: an alert that cannot be delivered is
logged, and the caller carries on with its own exit code.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

LOG = logging.getLogger("ops.alert")
WEBHOOK_ENV = "ALERT_WEBHOOK_URL"


def webhook_from_env() -> str | None:
    return os.environ.get(WEBHOOK_ENV) or None


def send_alert(text: str, webhook_url: str | None = None, timeout: float = 10.0) -> bool:
    """POST {"text": text} to the webhook; True when it answered 2xx."""
    url = webhook_url if webhook_url is not None else webhook_from_env()
    if not url:
        LOG.info("%s is not set; alert not sent: %s", WEBHOOK_ENV, text)
        return False
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        LOG.error("alert webhook URL must be http(s); alert not sent")
        return False
    body = json.dumps({"text": text}).encode()
    req = urllib.request.Request(  # nosec B310
        url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # nosec B310
            status: int = resp.status
    except (urllib.error.URLError, OSError) as err:
        LOG.error("alert could not be delivered (%s): %s", err, text)
        return False
    if not 200 <= status < 300:
        LOG.error("alert webhook answered HTTP %s: %s", status, text)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.alert",
        description=f"Post a message to the Slack-compatible webhook in ${WEBHOOK_ENV} "
                    "(nothing is sent when it is unset).")
    parser.add_argument("text", help="the message to send")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the webhook (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    delivered = send_alert(args.text, timeout=args.timeout)
    if webhook_from_env() and not delivered:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
