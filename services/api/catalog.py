"""The models this deployment serves, as the API describes and plans for them (no torch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.api.errors import ApiError, NotFound
from shared.config.settings import CommonSettings
from workers.inference.runtime.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    read_checkpoint,
)
from workers.inference.runtime.sources import resolve_source

log = logging.getLogger("vlmq.api")


class ModelUnavailable(ApiError):
    status_code, code = 503, "model_unavailable"


@dataclass
class ModelCatalog:
    default_id: str
    checkpoints: dict[str, CheckpointInfo]
    problems: dict[str, str]

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> ModelCatalog:
        """Every registered model; one that cannot be read is listed as a problem, not a crash."""
        catalog = cls(settings.resolved_default_model, {}, {})
        for model_id, source in settings.model_sources.items():
            try:
                path = resolve_source(
                    source, cache_dir=settings.resolved_hub_cache_dir, download=settings.hub_download, weights=False
                )
                catalog.checkpoints[model_id] = read_checkpoint(path)
            except CheckpointError as error:
                log.warning("model %s is not readable by the API: %s", model_id, error)
                catalog.problems[model_id] = str(error)
        return catalog

    def resolve(self, requested: str | None) -> str:
        model_id = requested or self.default_id
        if model_id not in self.checkpoints and model_id not in self.problems:
            raise NotFound(f"unknown model {model_id!r}; see GET /v1/models", code="model_not_found")
        return model_id

    def checkpoint(self, model_id: str) -> CheckpointInfo:
        if model_id in self.problems:
            raise ModelUnavailable(self.problems[model_id])
        return self.checkpoints[model_id]

    def describe(self) -> list[dict]:
        return [
            info.describe(model_id, is_default=model_id == self.default_id)
            for model_id, info in self.checkpoints.items()
        ]
