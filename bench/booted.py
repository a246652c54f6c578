"""A gunicorn hook for the benchmarks (``--config=python:bench.booted``): each worker,
once it has loaded the app and before it takes a request, says so with an empty file
named by its pid in BENCH_BOOTED_DIR.

gunicorn listens (and answers, from whichever worker is up) before every worker has
booted; a worker that boots late takes no part in a warm-up and boots in the measured
run instead. Seen on gthread workers, where the first worker up accepts every connection
while the other still loads the app (bench.visits waits for every worker's file)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DIRECTORY = "BENCH_BOOTED_DIR"


def post_worker_init(worker: Any) -> None:
    directory = os.environ.get(DIRECTORY)
    if directory:
        Path(directory, str(worker.pid)).touch()
