#!/bin/bash
# Before this instance gets traffic: the full synthetic check (python -m ops.smoke
# --full: the form with its CSRF token, the API, both links, an upload downloaded byte
# for byte, the 404 page) against the instance's own nginx, through
# /usr/local/bin/shortener-smoke (.ebextensions/backup.config). A failure fails the
# instance's deployment, so a traffic-splitting deployment gives the new version no
# traffic and terminates it: a version whose create path is broken costs no request.
#
# It runs on every instance that deploys the app, scale-outs included, and each run
# leaves three tagged probe links (smoke-...) and a 1 KiB file. ops.release runs the
# same script on a canary through SSM while it serves its share.
set -euo pipefail
exec /usr/local/bin/shortener-smoke 10
