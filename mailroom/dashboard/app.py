"""`mailroom dashboard`: one page, refreshed live, served on loopback by FastAPI + uvicorn; its
charts are drawn by plotly.js, served from the plotly wheel (nothing is fetched from the internet).

    GET /            the page (static/index.html + dashboard.js)
    GET /api/state   every panel as JSON (`panels.page_state`), what the page polls
    GET /metrics     the dashboard's own metrics, for Prometheus (counters only, no document content: open)
    GET /healthz     liveness (open)

Every other path needs the dashboard's token (`Settings.dashboard_secret()`: MAILROOM_DASHBOARD_TOKEN or
<run_dir>/dashboard.token): `/?token=<token>` (the URL `mailroom dashboard` prints) answers with a cookie
(HttpOnly, SameSite=Strict) and a redirect to `/`, so the page's own requests carry it; tools may send
`Authorization: Bearer <token>` instead. Without it: 401 and one line saying where the token is.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import sys
from importlib.resources import files
from pathlib import Path

from config.settings import Settings

STATIC = Path(str(files("mailroom.dashboard") / "static"))
REFRESH_S = 5
OPEN_PATHS = ("/healthz", "/metrics")  # no document content: Prometheus and the stack's liveness check need no token
log = logging.getLogger("mailroom.dashboard")


def plotly_js() -> Path:
    """plotly.min.js as the plotly wheel ships it."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def token_cookie(port: int) -> str:
    """The cookie holding the token (named by port: browsers share cookies across the ports of 127.0.0.1)."""
    return f"mailroom_dashboard_token_{port}"


def create_app(sources, token: str, port: int = 0, where: str = "MAILROOM_DASHBOARD_TOKEN"):
    """The FastAPI app over `sources` (a `sources.Sources`, or anything with `gather()`), every page behind `token`
    (`where`: where a person finds it, for the 401 answer)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

    from mailroom.dashboard.panels import page_state

    app = FastAPI(title="Mailroom dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry()
    refreshes = Counter("mailroom_dashboard_refreshes", "page states served", registry=registry)
    unanswered = Counter("mailroom_dashboard_unanswered_sources", "sources that did not answer a refresh", registry=registry)
    assets = {"plotly.min.js": plotly_js(), **{p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css")}}
    if not token:
        raise ValueError("the dashboard needs a token (Settings.dashboard_secret())")
    cookie = token_cookie(port)

    def matches(given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), token.encode())

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        bearer = request.headers.get("authorization", "")
        if matches(request.cookies.get(cookie)) or (bearer.startswith("Bearer ") and matches(bearer[len("Bearer "):])):
            return await call_next(request)
        if matches(request.query_params.get("token")):  # the printed URL: keep the token in a cookie, drop it from the address
            answer = RedirectResponse(request.url.path, status_code=303)
            answer.set_cookie(cookie, token, httponly=True, samesite="strict", path="/")
            return answer
        return PlainTextResponse(f"401: the dashboard needs its token: open the URL `mailroom dashboard` prints, or add ?token=<the token in {where}>\n",
                                 status_code=401)

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    def asset(name: str):
        if name not in assets:
            raise HTTPException(404)
        return FileResponse(assets[name], headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/state")
    def state():
        inputs = sources.gather()
        refreshes.inc()
        unanswered.inc(len(inputs.problems))
        return JSONResponse({**page_state(inputs), "refresh_s": REFRESH_S})

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app


def _token_place(settings: Settings) -> str:
    return "MAILROOM_DASHBOARD_TOKEN" if settings.dashboard_token else str(settings.dashboard_token_file)


def serve(settings: Settings) -> None:
    """Serve the dashboard on settings.host:dashboard_port until interrupted."""
    import uvicorn

    from mailroom.dashboard.feed import TopicFeed
    from mailroom.dashboard.sources import Sources

    feed = TopicFeed(settings).start()
    try:
        app = create_app(Sources(settings, feed), settings.dashboard_secret(), settings.dashboard_port, _token_place(settings))
        uvicorn.run(app, host=settings.host, port=settings.dashboard_port, log_level="warning",
                    access_log=False)
    finally:
        feed.close()


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from mailroom.stack import DashboardService

    if args.background:
        service = DashboardService(settings)
        service.start()
        print(f"dashboard: {settings.dashboard_login_url} (log {service.log}); `mailroom stack down` stops it")
        return 0
    # on a terminal the URL with its token; into a log (`--background`: the service's log) the URL and where the token is
    url = settings.dashboard_login_url if sys.stdout.isatty() else f"{settings.dashboard_url} (token: {_token_place(settings)})"
    print(f"dashboard: {url} (Ctrl-C stops it)", flush=True)
    serve(settings)
    return 0


def register(sub) -> None:
    parser = sub.add_parser("dashboard", help="the live dashboard page (Prometheus, accuracy, models, drift, alerts) on 127.0.0.1",
                            description="Serve the dashboard page on MAILROOM_HOST:MAILROOM_DASHBOARD_PORT (default "
                            "http://127.0.0.1:28000): throughput and latency, dead letters, online accuracy per model version, "
                            "champion vs challenger and the judge, model events, drift against the training data, open alerts. "
                            "It reads Prometheus, Redis, the registry and the operational topics; start them with `mailroom stack up`.")
    parser.add_argument("--background", action="store_true", help="start it as a service of the stack (as `mailroom run` does) and return")
    parser.set_defaults(func=cmd_dashboard)
