"""Entry point for `python -m bench`: every server it starts is stopped when it ends,
whether it finished, failed, or was stopped with Ctrl-C or SIGTERM."""
import sys

from bench.run import main
from bench.servers import stopped_at_exit

try:
    with stopped_at_exit():
        status = main()
except KeyboardInterrupt:
    print("bench: interrupted; every server it started is stopped", file=sys.stderr)
    status = 130  # 128 + SIGINT, as a shell reports it
raise SystemExit(status)
