"""`GET /metrics`: the Prometheus text exposition, summed over every worker."""

from __future__ import annotations

from flask import Blueprint, Response

from flaskserve.core.dataplane import DataPlane
from flaskserve.observability import metrics
from flaskserve.protocol.route_policy import admin_route


def create_blueprint(dataplane: DataPlane) -> Blueprint:
    bp = Blueprint("metrics", __name__)
    metrics.record_states(dataplane.repository)

    @bp.get("/metrics")
    @admin_route
    def scrape() -> Response:
        metrics.record_states(dataplane.repository)
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    return bp
