"""Registry entries: local directories, and hub ids looked up in a local cache (never run remote code)."""

from __future__ import annotations

import shutil

import pytest

from shared.config.settings import CommonSettings, WorkerSettings
from workers.inference.runtime.checkpoint import CheckpointError, read_checkpoint
from workers.inference.runtime.sources import is_hub_id, resolve_source

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _cache_with(cache_dir, repo_id, checkpoint_dir):
    """The huggingface_hub cache layout, as a previous download (or `hf download`) leaves it."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    shutil.copytree(checkpoint_dir, repo / "snapshots" / REVISION)
    return repo / "snapshots" / REVISION


def test_a_hub_id_in_the_local_cache_resolves_offline_to_its_snapshot(tmp_path, seed_model_dirs):
    # given InternVL2-1B in a hub cache, and downloads switched off
    snapshot = _cache_with(tmp_path / "hub", "OpenGVLab/InternVL2-1B", seed_model_dirs["internvl2-1b"])

    # when the registry entry is resolved
    path = resolve_source("OpenGVLab/InternVL2-1B", cache_dir=tmp_path / "hub", download=False)

    # then it is the cached snapshot, readable as an original checkpoint
    assert path.resolve() == snapshot.resolve()
    assert read_checkpoint(path).template.name == "Hermes-2"


def test_a_hub_id_missing_from_the_cache_is_a_clear_error_without_downloads(tmp_path):
    with pytest.raises(CheckpointError, match="not in the cache and VLMQ_HUB_DOWNLOAD is off"):
        resolve_source("OpenGVLab/InternVL2-8B", cache_dir=tmp_path / "hub", download=False)


def test_local_paths_are_never_taken_for_hub_ids(tmp_path, seed_model_dirs):
    assert is_hub_id("OpenGVLab/InternVL2_5-4B")
    assert not is_hub_id(str(seed_model_dirs["internvl2-1b"]))
    assert not is_hub_id("/models/InternVL2-1B") and not is_hub_id("./models/x") and not is_hub_id("models")


def test_the_registry_defaults_to_the_single_model_path_and_validates_names(tmp_path, monkeypatch):
    monkeypatch.delenv("VLMQ_MODELS", raising=False)
    single = CommonSettings(data_dir=tmp_path, model_path=tmp_path / "InternVL2-1B")
    assert single.model_sources == {"internvl2-1b": str((tmp_path / "InternVL2-1B").resolve())}
    registry = CommonSettings(models={"a": "/m/a", "b": "Org/B"}, default_model="b")
    assert registry.resolved_default_model == "b" and list(registry.model_sources) == ["a", "b"]
    with pytest.raises(ValueError, match="not in VLMQ_MODELS"):
        CommonSettings(models={"a": "/m/a"}, default_model="c")
    with pytest.raises(ValueError, match="not in the registry: c"):
        _ = WorkerSettings(models={"a": "/m/a"}, serve_models=["c"]).served_models


def test_a_worker_consumes_only_the_queues_of_the_models_it_serves(tmp_path):
    from shared.queue import create_celery, queue_for

    settings = WorkerSettings(
        data_dir=tmp_path, broker_url="memory://", models={"internvl2-1b": "/m/1b", "internvl2-8b": "/m/8b"},
        serve_models=["internvl2-8b"],
    )
    app = create_celery(settings, models=settings.served_models)
    assert [queue.name for queue in app.conf.task_queues] == [queue_for("internvl2-8b")] == ["vlmq.inference.internvl2-8b"]
