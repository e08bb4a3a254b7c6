"""The API's share of the metrics: every request counted and timed by route template, and
``/metrics`` serving the samples of all API processes plus the depth of every queue."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.config.settings import ApiSettings
from shared.metrics import series
from shared.metrics.exposition import metrics_registry, render
from shared.queue import FRAMES_QUEUE, NOTIFY_QUEUE, queue_for, resolve_broker_url

router = APIRouter(tags=["operations"])


class RequestMetrics:
    """Pure ASGI (not BaseHTTPMiddleware), so event streams pass through untouched; a request is
    timed until its last body chunk is sent."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label: scanners must not mint a series per URL.
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            series.HTTP_REQUESTS.labels(method, template, str(status)).inc()
            series.HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - started)


def queues_of(settings: ApiSettings) -> list[str]:
    """Every queue a deployment has: one per registered model, the frames worker's and the notifier's."""
    return [queue_for(model_id) for model_id in settings.model_sources] + [FRAMES_QUEUE, NOTIFY_QUEUE]


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    body, content_type = render(request.app.state.metrics_registry)
    return Response(body, media_type=content_type)


def api_metrics_registry(settings: ApiSettings):
    return metrics_registry(broker_url=resolve_broker_url(settings), queues=queues_of(settings))
