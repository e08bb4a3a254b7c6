"""Run the API: ``python -m services.api`` (host and port from VLMQ_API_HOST / VLMQ_API_PORT)."""

import logging

import uvicorn

from services.api.app import create_app
from shared.config.settings import get_api_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_api_settings()
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info")


if __name__ == "__main__":
    main()
