"""Redirect benchmark: this app against the original app, the framework and nginx.

Run with `python -m bench --help`. Never run by `make test`; `tests/test_bench_smoke.py`
only checks that a tiny run works end to end.
"""
