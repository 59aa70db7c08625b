"""Where the dashboard's data comes from: Prometheus' HTTP API, the accuracy job's Redis hashes,
the model registry (champion cards and history) and the operational topics (`TopicFeed`)."""

from __future__ import annotations

import time

from config.settings import Settings
from mailroom.dashboard.feed import TopicFeed
from mailroom.dashboard.panels import QUERIES, RANGE_S, STEP_S, Inputs
from mailroom.dashboard.prometheus_api import PrometheusApi, PrometheusUnavailable
from models.modelio import KINDS

MODELS_REFRESH_S = 30  # cards and history change rarely: read the registry at most this often


class Sources:
    """The dashboard's connections; `gather()` reads everything one refresh needs, noting what failed."""

    def __init__(self, settings: Settings, feed: TopicFeed | None = None):
        self.settings = settings
        self.prometheus = PrometheusApi(settings.prometheus_url)
        self.redis = settings.redis_client("dashboard", socket_timeout=2, socket_connect_timeout=2)
        self.feed = feed
        self.registry = None  # opened on first use: there may be no registry yet
        self._models: dict = {}
        self._models_read_s = 0.0

    def gather(self) -> Inputs:
        now = time.time()
        inputs = Inputs(now_ms=int(now * 1000))
        try:
            inputs.prometheus = {name: (self.prometheus.query_range(expr, now - RANGE_S, now, STEP_S) if name.endswith("_range")
                                        else self.prometheus.query(expr)) for name, expr in QUERIES.items()}
            inputs.firing = self.prometheus.alerts()
        except PrometheusUnavailable as exc:
            inputs.prometheus = inputs.firing = None
            inputs.problems.append(f"Prometheus ({self.settings.prometheus_url}) does not answer: {exc}")
        try:
            from mailroom.accuracy import REDIS_NAMESPACE, SHADOW_NAMESPACE, read_dashboard
            from schemas.redis_keys import shadow_pattern

            inputs.accuracy = read_dashboard(self.redis, REDIS_NAMESPACE)
            inputs.shadow = read_dashboard(self.redis, SHADOW_NAMESPACE, shadow_pattern)
        except Exception as exc:  # redis-py's ConnectionError, AuthenticationError, ...
            inputs.problems.append(f"Redis does not answer ({type(exc).__name__}): no accuracy figures or champion/challenger pairs")
        if self.feed is None or not self.feed.connected:
            inputs.problems.append("Kafka is not reachable yet: no accuracy history, model events or decisions")
        inputs.feed = self.feed.snapshot() if self.feed is not None else {}
        inputs.models = self.models(now)
        return inputs

    def models(self, now: float) -> dict[str, dict]:
        """kind -> champion card and registry history (cached for MODELS_REFRESH_S)."""
        if now - self._models_read_s < MODELS_REFRESH_S:
            return self._models
        from models.registry import Registry, RegistryError

        models = {}
        try:
            self.registry = self.registry or Registry(self.settings.registry_dir)
            for kind in KINDS:
                try:
                    models[kind] = {"card": self.registry.champion(kind).card, "history": self.registry.history(kind)}
                except RegistryError:
                    continue
        except Exception:  # no registry yet, or its database is busy: keep what we had
            return self._models
        self._models, self._models_read_s = models, now
        return models
