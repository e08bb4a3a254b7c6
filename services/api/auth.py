"""Bearer API keys: ``tenant:key`` pairs, kept and compared only as sha256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from shared.config.settings import ApiSettings, Environment

log = logging.getLogger("vlmq.api")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRing:
    """(key hash, tenant) pairs. Lookup compares against every entry in constant time each."""

    entries: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        entries = []
        for pair in filter(None, (item.strip() for item in spec.split(","))):
            tenant, separator, key = pair.partition(":")
            if not separator or not tenant.strip() or not key.strip():
                raise ValueError("VLMQ_API_KEYS must be comma-separated tenant:key pairs")
            entries.append((hash_key(key.strip()), tenant.strip()))
        return cls(tuple(entries))

    def tenant_for(self, key: str) -> str | None:
        presented = hash_key(key)
        found = None
        for key_hash, tenant in self.entries:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(presented, key_hash):
                found = tenant
        return found


DEVELOPMENT_TENANT = "dev"


def load_key_ring(settings: ApiSettings) -> KeyRing:
    """Configured keys; in development with none, a key generated once and kept in data_dir/api-key."""
    if settings.api_keys.strip():
        return KeyRing.parse(settings.api_keys)
    if settings.env is not Environment.development:
        raise RuntimeError("VLMQ_API_KEYS is required outside development")
    key_file = settings.data_dir / "api-key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Exclusive create: several API processes starting together agree on one key.
        with open(key_file, "x") as handle:
            key_file.chmod(0o600)
            handle.write(f"vlmq_dev_{secrets.token_urlsafe(24)}\n")
        log.warning("no VLMQ_API_KEYS set: generated a development key in %s", key_file)
    except FileExistsError:
        pass
    key = ""
    for _ in range(50):  # another process may have created the file and not yet written it
        key = key_file.read_text().strip()
        if key:
            break
        time.sleep(0.1)
    return KeyRing.parse(f"{DEVELOPMENT_TENANT}:{key}")
