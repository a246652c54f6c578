"""Run the REAL eb CLI (awsebcli, from .venv-eb) with botocore's Stubber as AWS.

    .venv-eb/bin/python tests/fakes/stubbed_aws_eb.py SCENARIO.json deploy ENV --version V

Nothing of eb is modelled here: argument parsing, the order of its API calls, how it
waits for events, what it prints and its exit code are awsebcli's own code (3.27.5, see
requirements-deploy.txt). Only its AWS endpoints are replaced: every botocore client eb
creates gets a `botocore.stub.Stubber` loaded with that service's responses from the
scenario file, in order. Stubber validates each call's parameters against the service
model and fails on a call the scenario does not expect, so a change in what eb sends
shows up as a failing test, not as a silently wrong fake.

Two things of the machine are replaced, so a 30-minute wait takes no time:
`time.sleep` advances a virtual clock instead of sleeping, and eb's clock
(`ebcli.lib.utils.datetime_utcnow`, which `commonops._timeout_reached` reads) runs on it.

The scenario file: {"responses": [{"service": "elasticbeanstalk", "operation":
"describe_environments", "response": {...}} or {..., "error": {"code": ..., "message":
...}}, ...], "log": "calls.json"}; an entry may name the "request_id" its answer
carries (eb follows an update's events by the request id of its UpdateEnvironment
call). On exit the runner writes to "log" every call eb made, in order ({"service",
"operation", "params"}), its arguments, and the responses left unused.
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import botocore.session
from botocore.stub import Stubber

SCENARIO = json.loads(open(sys.argv[1]).read())
CALLS: list[dict[str, Any]] = []
STUBBERS: dict[str, Stubber] = {}
VIRTUAL = {"seconds": 0.0}


def virtual_sleep(seconds: Any) -> None:
    VIRTUAL["seconds"] += float(seconds)


def virtual_utcnow() -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=VIRTUAL["seconds"])


def record(service: str) -> Any:
    def handler(params: dict[str, Any], model: Any, **_: Any) -> None:
        CALLS.append({"service": service, "operation": model.name,
                      "params": json.loads(json.dumps(params, default=str))})
    return handler


def revive_dates(value: Any, key: str = "") -> Any:
    """JSON has no timestamps: turn ISO strings under *Date/*Time keys into the
    datetimes botocore's parser would have made of AWS's answer."""
    if isinstance(value, dict):
        return {k: revive_dates(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [revive_dates(v, key) for v in value]
    if isinstance(value, str) and key.endswith(("Date", "Time", "Created", "Updated")):
        return datetime.fromisoformat(value)
    return value


def stubbed(create_client: Any) -> Any:
    def create(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = create_client(self, service_name, *args, **kwargs)
        stubber = Stubber(client)
        for number, entry in enumerate(SCENARIO["responses"]):
            if entry["service"] != service_name:
                continue
            if "error" in entry:
                stubber.add_client_error(entry["operation"], entry["error"]["code"],
                                         entry["error"]["message"], 400)
            else:  # eb reads the request id of every answer, as AWS always sends one
                metadata = {"RequestId": entry.get("request_id", f"request-{number}"),
                            "HTTPStatusCode": 200}
                response = {"ResponseMetadata": metadata, **revive_dates(entry["response"])}
                stubber.add_response(entry["operation"], response)
        # Registered ahead of the Stubber's own handlers, so a call it rejects is logged.
        client.meta.events.register_first("before-parameter-build.*.*", record(service_name))
        stubber.activate()
        STUBBERS[service_name] = stubber
        return client
    return create


def write_log() -> None:
    unused = {name: len(stubber._queue) for name, stubber in STUBBERS.items()}
    with open(SCENARIO["log"], "w") as log:
        json.dump({"argv": sys.argv[1:], "calls": CALLS, "unused_responses": unused,
                   "virtual_seconds": VIRTUAL["seconds"]}, log, indent=1)


def main() -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="stubbed", AWS_SECRET_ACCESS_KEY="stubbed",
                      AWS_SESSION_TOKEN="stubbed")
    botocore.session.Session.create_client = stubbed(botocore.session.Session.create_client)
    time.sleep = virtual_sleep
    setattr(importlib.import_module("ebcli.lib.utils"), "datetime_utcnow", virtual_utcnow)
    atexit.register(write_log)
    sys.argv = ["eb", *sys.argv[2:]]
    importlib.import_module("ebcli.core.ebcore").main()


if __name__ == "__main__":
    main()
