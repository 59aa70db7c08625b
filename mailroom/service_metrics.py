"""The project's own services' metrics (prometheus-client): served on the service's metrics port
(`config.monitoring.metrics_port`) and registered as a Prometheus target while the service runs."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, start_http_server

from config.monitoring import metrics_port, register_target, unregister_target
from config.settings import Settings


@contextmanager
def exported(settings: Settings, name: str, registry: CollectorRegistry) -> Iterator[None]:
    """Serve `registry` at http://<host>:<metrics port of name>/metrics for the duration of the block. A clean exit
    unregisters the target; an exception leaves it registered, so Prometheus reports the service down."""
    port = metrics_port(settings, name)
    server, thread = start_http_server(port, addr=settings.host, registry=registry)
    register_target(settings, name, port)
    try:
        yield
        unregister_target(settings, name)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
