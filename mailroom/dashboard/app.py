"""`mailroom dashboard`: one page, refreshed live, served on loopback by FastAPI + uvicorn; its
charts are drawn by plotly.js, served from the plotly wheel (nothing is fetched from the internet).

    GET /            the page (static/index.html + dashboard.js)
    GET /api/state   every panel as JSON (`panels.page_state`), what the page polls
    GET /metrics     the dashboard's own metrics, for Prometheus
"""

from __future__ import annotations

import argparse
import logging
from importlib.resources import files
from pathlib import Path

from config.settings import Settings

STATIC = Path(str(files("mailroom.dashboard") / "static"))
REFRESH_S = 5
log = logging.getLogger("mailroom.dashboard")


def plotly_js() -> Path:
    """plotly.min.js as the plotly wheel ships it."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def create_app(sources):
    """The FastAPI app over `sources` (a `sources.Sources`, or anything with `gather()`)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

    from mailroom.dashboard.panels import page_state

    app = FastAPI(title="Mailroom dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry()
    refreshes = Counter("mailroom_dashboard_refreshes", "page states served", registry=registry)
    unanswered = Counter("mailroom_dashboard_unanswered_sources", "sources that did not answer a refresh", registry=registry)
    assets = {"plotly.min.js": plotly_js(), **{p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css")}}

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


def serve(settings: Settings) -> None:
    """Serve the dashboard on settings.host:dashboard_port until interrupted."""
    import uvicorn

    from mailroom.dashboard.feed import TopicFeed
    from mailroom.dashboard.sources import Sources

    feed = TopicFeed(settings).start()
    try:
        uvicorn.run(create_app(Sources(settings, feed)), host=settings.host, port=settings.dashboard_port, log_level="warning",
                    access_log=False)
    finally:
        feed.close()


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from mailroom.stack import DashboardService

    if args.background:
        service = DashboardService(settings)
        service.start()
        print(f"dashboard: {settings.dashboard_url} (log {service.log}); `mailroom stack down` stops it")
        return 0
    print(f"dashboard: {settings.dashboard_url} (Ctrl-C stops it)")
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
