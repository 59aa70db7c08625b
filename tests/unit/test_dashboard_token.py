"""The dashboard's token: every page needs it, /healthz and /metrics do not; served by uvicorn on a free loopback port."""

from __future__ import annotations

import http.cookiejar
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from mailroom.dashboard.app import create_app, token_cookie

TOKEN = "s3cret-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import uvicorn

    port = _free_port()
    app = create_app(sources=None, token=TOKEN, port=port, where="/run/dashboard.token")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", port
    srv.should_exit = True
    thread.join(10)


def _get(url: str, headers: dict | None = None, opener=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("path", ["/", "/static/dashboard.js", "/api/state", "/anything"])
def test_pages_without_the_token_answer_401_saying_where_it_is(server, path):
    base, _ = server
    status, body = _get(base + path)
    assert status == 401 and "/run/dashboard.token" in body and len(body.strip().splitlines()) == 1
    assert _get(base + path + "?token=wrong")[0] == 401
    assert _get(base + path, {"Authorization": "Bearer wrong"})[0] == 401


def test_healthz_and_metrics_are_open(server):
    base, _ = server
    assert _get(base + "/healthz")[0] == 200
    status, body = _get(base + "/metrics")
    assert status == 200 and "mailroom_dashboard_refreshes_total" in body


def test_the_printed_url_sets_a_cookie_that_the_page_and_its_requests_carry(server):
    base, port = server
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    status, body = _get(f"{base}/?token={TOKEN}", opener=opener)  # redirected to / with the cookie
    assert status == 200 and "<html" in body.lower()
    assert [c.name for c in jar] == [token_cookie(port)]
    assert _get(base + "/static/dashboard.js", opener=opener)[0] == 200


def test_a_bearer_header_is_enough(server):
    base, _ = server
    assert _get(base + "/static/dashboard.js", {"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_no_token_no_app():
    with pytest.raises(ValueError):
        create_app(sources=None, token="")
