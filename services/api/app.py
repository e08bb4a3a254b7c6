"""The FastAPI application factory."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy.orm import Session

from services.api.auth import KeyRing, load_key_ring
from services.api.catalog import ModelCatalog
from services.api.errors import install_error_handlers
from services.api.events import deltas_reader
from services.api.limits import TenantLimiter
from services.api.metrics import RequestMetrics, api_metrics_registry
from services.api.metrics import router as metrics_router
from services.api.openai import OPENAI_SCHEMAS
from services.api.request_body import CloseUnreadBodies
from services.api.routes import (
    health,
    indexes,
    jobs,
    models,
    openai_batches,
    openai_chat,
    openai_files,
    uploads,
    webhooks,
)
from services.api.schemas import JobCreate
from services.api.submitter import JobSubmitter
from services.api.waiting import JobWaiter
from shared.config.settings import ApiSettings, get_api_settings
from shared.db.engine import session_scope
from shared.db.inserts import insert_ignoring_duplicates
from shared.db.models import ApiKey, Tenant, utcnow
from shared.queue import create_celery, resolve_broker_url
from shared.storage import open_store

log = logging.getLogger("vlmq.api")


def sync_tenants(session: Session, key_ring: KeyRing) -> None:
    """Tenants and key hashes from the configuration become rows (resources reference tenants).
    Every API process does this as it starts, often at the same moment: a row another process
    has just written is skipped, never a startup failure."""
    if not key_ring.entries:
        return
    connection, now = session.connection(), utcnow()
    tenants = sorted({tenant for _, tenant in key_ring.entries})
    connection.execute(insert_ignoring_duplicates(connection, Tenant.__table__),
                       [{"id": tenant, "created_at": now} for tenant in tenants])
    connection.execute(insert_ignoring_duplicates(connection, ApiKey.__table__),
                       [{"key_sha256": key_hash, "tenant_id": tenant, "created_at": now}
                        for key_hash, tenant in key_ring.entries])


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or get_api_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        with session_scope(settings.resolved_database_url) as session:
            sync_tenants(session, app.state.key_ring)
        app.state.submitter = JobSubmitter(database_url=settings.resolved_database_url, celery=app.state.celery)
        app.state.waiter = JobWaiter(database_url=settings.resolved_database_url)
        app.state.waiter.start()
        yield
        await app.state.waiter.close()
        app.state.submitter.close()

    app = FastAPI(title="vlmq", version="0.1.0", lifespan=lifespan, description="InternVL as asynchronous jobs.")
    app.state.settings = settings
    app.state.key_ring = load_key_ring(settings)
    app.state.store = open_store(settings.resolved_storage_url)
    app.state.celery = create_celery(settings, name="vlmq-api")
    app.state.catalog = ModelCatalog.from_settings(settings)
    app.state.limiter = TenantLimiter.from_settings(settings)
    app.state.deltas = deltas_reader(resolve_broker_url(settings))
    app.state.metrics_registry = api_metrics_registry(settings)
    app.add_middleware(RequestMetrics)
    app.add_middleware(CloseUnreadBodies)
    install_error_handlers(app)
    for module in (health, jobs, uploads, models, webhooks, indexes, openai_chat, openai_files, openai_batches):
        app.include_router(module.router)
    app.include_router(metrics_router)
    app.openapi = lambda: _openapi_with_job_create(app)
    return app


def _openapi_with_job_create(app: FastAPI) -> dict:
    """POST /v1/jobs reads its body itself (JSON or multipart), so FastAPI does not see the JSON
    model; add it to the components its documented request body refers to."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (JobCreate, *indexes.INDEX_SCHEMAS, *OPENAI_SCHEMAS):
            document = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(document.pop("$defs", {}))
            components[model.__name__] = document
        app.openapi_schema = schema
    return app.openapi_schema
