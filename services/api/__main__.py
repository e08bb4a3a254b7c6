"""Run the API: ``python -m services.api`` (VLMQ_API_HOST, VLMQ_API_PORT, VLMQ_API_WORKERS,
VLMQ_API_ACCESS_LOG, and the connection limits VLMQ_API_MAX_HEADER_BYTES, VLMQ_API_HEADER_TIMEOUT_S,
VLMQ_API_BODY_IDLE_TIMEOUT_S, VLMQ_API_MAX_CONCURRENCY)."""

import uvicorn

from shared.config.settings import get_api_settings
from shared.logs import logging_config
from shared.metrics.multiprocess import start_process_tree


def main() -> None:
    settings = get_api_settings()  # validated here, so bad production settings stop the process at once
    start_process_tree()  # before uvicorn starts its workers: they inherit the directory
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        timeout_worker_healthcheck=settings.api_worker_healthcheck_s,
        access_log=settings.api_access_log,
        # h11, not httptools: h11 bounds a request head; the subclass adds the timeouts (see its module).
        http="services.api.http_protocol:BoundedH11Protocol",
        h11_max_incomplete_event_size=settings.api_max_header_bytes,
        limit_concurrency=settings.api_max_concurrency or None,
        log_config=logging_config(settings, role="api"),  # applied in every worker process too
    )


if __name__ == "__main__":
    main()
