"""API processes starting together against one database (several uvicorn workers, several replicas)."""

from __future__ import annotations

import threading

from sqlalchemy import select

from services.api.app import sync_tenants
from services.api.auth import KeyRing
from shared.db.engine import session_scope
from shared.db.models import ApiKey, Tenant
from tests.support.services import create_database, drop_database, migrate


def test_processes_starting_at_once_sync_the_same_tenants_without_failing():
    # given a fresh database and four API processes' worth of startups with the same keys
    name, database_url = create_database()
    try:
        migrate(database_url)
        key_ring = KeyRing.parse("acme:key-a-0123456789,globex:key-g-0123456789,acme:key-a2-0123456789")
        together, failures = threading.Barrier(4), []

        def start() -> None:
            together.wait()
            try:
                with session_scope(database_url) as session:
                    sync_tenants(session, key_ring)
            except Exception as error:  # noqa: BLE001  (what a failed startup would have raised)
                failures.append(error)

        # when they sync their tenants at the same moment
        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        # then none fails, and each tenant and key exists once
        assert failures == []
        with session_scope(database_url) as session:
            assert sorted(session.scalars(select(Tenant.id))) == ["acme", "globex"]
            assert len(session.scalars(select(ApiKey.key_sha256)).all()) == 3
    finally:
        drop_database(name)
