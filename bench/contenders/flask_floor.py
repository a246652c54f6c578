"""The framework's floor: a Flask route that returns a constant redirect.

No app can redirect faster than this under Flask; the benchmark states every other
figure as a ratio to it.
"""
from flask import Flask, redirect
from werkzeug.wrappers import Response

LOCATION = "https://example.com/"

app = Flask(__name__)


@app.route("/<string:code>")
def constant_redirect(code: str) -> Response:
    """Redirect every code to the same place, without looking anything up."""
    return redirect(LOCATION)
