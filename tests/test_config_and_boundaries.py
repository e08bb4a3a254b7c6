"""Settings refuse unsafe production values; the API never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from services.api.auth import KeyRing, load_key_ring
from shared.config.settings import ApiSettings, CommonSettings
from tests.support.services import REPO_ROOT

PRODUCTION = {
    "env": "production",
    "database_url": "postgresql+psycopg://db/vlmq",
    "broker_url": "redis://redis:6379/0",
    "storage_url": "s3://media",
}


def test_production_refuses_to_start_without_api_keys():
    with pytest.raises(ValidationError, match="VLMQ_API_KEYS"):
        ApiSettings(**PRODUCTION)
    assert ApiSettings(**PRODUCTION, api_keys="acme:k").api_keys == "acme:k"


def test_production_refuses_embedded_defaults_and_private_networks():
    with pytest.raises(ValidationError, match="VLMQ_DATABASE_URL"):
        CommonSettings(env="production", broker_url="redis://x", storage_url="s3://b")
    with pytest.raises(ValidationError, match="ALLOW_PRIVATE_NETWORKS"):
        CommonSettings(**PRODUCTION, allow_private_networks=True)


def test_the_api_process_exits_in_production_without_keys():
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLMQ_")}
    env.update({"VLMQ_" + key.upper(): value for key, value in PRODUCTION.items()})
    completed = subprocess.run(
        [sys.executable, "-m", "services.api"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode != 0
    assert "VLMQ_API_KEYS" in completed.stderr


def test_development_without_keys_generates_one_and_keeps_it(tmp_path):
    settings = ApiSettings(data_dir=tmp_path)
    first = load_key_ring(settings)
    key = (tmp_path / "api-key").read_text().strip()
    assert first.tenant_for(key) == "dev"
    assert load_key_ring(settings) == first
    assert (tmp_path / "api-key").stat().st_mode & 0o077 == 0


def test_keys_are_tenant_pairs_and_malformed_specs_are_refused():
    ring = KeyRing.parse("acme:one, globex:two")
    assert ring.tenant_for("one") == "acme" and ring.tenant_for("two") == "globex"
    assert ring.tenant_for("three") is None
    assert all(len(key_hash) == 64 for key_hash, _ in ring.entries)
    with pytest.raises(ValueError):
        KeyRing.parse("no-colon-here")


def test_the_api_never_imports_torch():
    code = "import sys; import services.api.app; import services.api.__main__; print('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert completed.stdout.strip() == "False", completed.stderr
