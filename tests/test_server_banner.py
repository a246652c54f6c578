"""Responses do not advertise the server software (no `Server: gunicorn`), from the app
under real gunicorn with the repository's gunicorn.conf.py."""
from __future__ import annotations

import socket

import pytest
import requests

from tests.servers import GunicornServer


@pytest.mark.parametrize("path", ["/healthz", "/", "/no-such-link", "/static/no-such-file"])
def test_no_response_names_the_server_software(server: GunicornServer, path: str) -> None:
    response = requests.get(server.url + path, allow_redirects=False, timeout=10)
    assert response.status_code in (200, 404)
    assert "Server" not in response.headers
    assert "gunicorn" not in response.text.lower()


def test_a_request_gunicorn_itself_refuses_does_not_name_it_either(
        server: GunicornServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 400")
    assert "server:" not in head.lower() and "gunicorn" not in answer.decode("latin-1").lower()
