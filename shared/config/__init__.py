"""Settings for every process role (pydantic-settings, env prefix ``VLMQ_``)."""

from shared.config.settings import (
    ApiSettings,
    CommonSettings,
    Environment,
    WorkerSettings,
    get_api_settings,
    get_common_settings,
    get_worker_settings,
)

__all__ = [
    "ApiSettings",
    "CommonSettings",
    "Environment",
    "WorkerSettings",
    "get_api_settings",
    "get_common_settings",
    "get_worker_settings",
]
