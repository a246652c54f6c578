"""WSGI apps the benchmark compares this app against, each served by gunicorn.

Every contender redirects `GET /<code>`; they differ only in what they do first.
"""
