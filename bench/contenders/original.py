"""A copy of the original app's redirect route: it parses the whole urls.json per request.

Gunicorn starts it with the data directory as its working directory, exactly like the
original app, which opened `urls.json` relative to the current directory.
"""
import json

from flask import Flask, abort, redirect
from werkzeug.wrappers import Response

app = Flask(__name__)


@app.route("/<string:code>")
def redirect_to_url(code: str) -> Response:
    """Redirect to the stored URL, reading the file from disk every time."""
    with open("urls.json") as f:
        urls = json.load(f)
    if code in urls:
        if "url" in urls[code]:
            return redirect(urls[code]["url"])
    abort(404)
