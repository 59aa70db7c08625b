"""A small client of Prometheus' HTTP API (instant and range queries, alerts), as the dashboard uses it."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer, or answered with an error."""


class PrometheusApi:
    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def _get(self, path: str, params: dict | None = None):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=self.timeout_s) as resp:
                body = json.load(resp)
        except (OSError, ValueError) as exc:
            raise PrometheusUnavailable(f"{self.url}{path}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"{path}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict, float]]:
        """An instant vector: (labels, value) per series."""
        return [(r["metric"], float(r["value"][1])) for r in self._get("/api/v1/query", {"query": expr})["result"]]

    def query_range(self, expr: str, start_s: float, end_s: float, step_s: float) -> list[tuple[dict, list[tuple[float, float]]]]:
        """A range: (labels, [(unix seconds, value), ...]) per series."""
        data = self._get("/api/v1/query_range", {"query": expr, "start": start_s, "end": end_s, "step": step_s})
        return [(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]]

    def alerts(self) -> list[dict]:
        """Alerts pending or firing."""
        return self._get("/api/v1/alerts")["alerts"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=self.timeout_s) as resp:
                return resp.status == 200
        except OSError:
            return False
