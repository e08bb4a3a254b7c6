"""Run the API: ``python -m services.api`` (VLMQ_API_HOST, VLMQ_API_PORT, VLMQ_API_WORKERS,
VLMQ_API_ACCESS_LOG)."""

import logging

import uvicorn

from shared.config.settings import get_api_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_api_settings()  # validated here, so bad production settings stop the process at once
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        access_log=settings.api_access_log,
        log_level="info",
    )


if __name__ == "__main__":
    main()
