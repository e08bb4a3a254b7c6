"""Typed dependencies route handlers declare; the app's state is built once in ``app.py``.

The ones that only read app state are ``async``: FastAPI would run a plain ``def`` dependency in
the thread pool, a hop per dependency per request on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from services.api.auth import KeyRing
from services.api.catalog import ModelCatalog
from services.api.errors import Unauthorized
from services.api.limits import TenantLimiter
from services.api.request_body import (
    MAX_JSON_BODY,
    parse_body,
    read_capped_body,
    validation_failure,
)
from services.api.submitter import JobSubmitter
from services.api.waiting import MAX_WAIT_S, JobWaiter, wait_preference
from shared.config.settings import ApiSettings
from shared.db.engine import get_sessionmaker
from shared.storage import ObjectStore

_bearer = HTTPBearer(auto_error=False, description="A vlmq API key.")


async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = get_sessionmaker(settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


StorageDep = Annotated[ObjectStore, Depends(get_store)]


async def get_submitter(request: Request) -> JobSubmitter:
    return request.app.state.submitter


SubmitterDep = Annotated[JobSubmitter, Depends(get_submitter)]


async def get_catalog(request: Request) -> ModelCatalog:
    return request.app.state.catalog


CatalogDep = Annotated[ModelCatalog, Depends(get_catalog)]


async def get_limiter(request: Request) -> TenantLimiter:
    return request.app.state.limiter


LimiterDep = Annotated[TenantLimiter, Depends(get_limiter)]


async def get_tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer API key")
    key_ring: KeyRing = request.app.state.key_ring
    tenant = key_ring.tenant_for(credentials.credentials)
    if tenant is None:
        raise Unauthorized("invalid API key")
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
M = TypeVar("M", bound=BaseModel)


def json_body(model: type[M], *, limit: int = MAX_JSON_BODY) -> Any:
    """A JSON body as ``model``, read only once the API key has been checked, and capped.

    FastAPI reads (and parses, on the event loop) a body declared as a model parameter before it
    solves any dependency, the key included; this dependency reads it after. The route's OpenAPI
    document names the body itself (``openapi_extra``)."""

    async def read(request: Request, _tenant: TenantDep) -> M:
        body = await read_capped_body(request, limit, "this body is limited to {limit} bytes")
        try:
            return await parse_body(model.model_validate_json, body or b"{}")
        except ValidationError as error:
            raise validation_failure(error) from None

    return Depends(read)


async def get_waiter(request: Request) -> JobWaiter:
    return request.app.state.waiter


WaiterDep = Annotated[JobWaiter, Depends(get_waiter)]

IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Within 24 h, a request with the same key (and the same body) returns the job the "
        "first one created, with status 200, instead of creating another; the same key with a different "
        "body is 409 `idempotency_key_reused`.",
    ),
]


async def get_wait_s(
    prefer: Annotated[
        str | None,
        Header(
            alias="Prefer",
            description=f"`wait=N` (RFC 7240): hold the response until the job has ended, at most N seconds "
            f"(N is capped at {MAX_WAIT_S}). 200 with the finished job if it ended, else 202 as usual."
        ),
    ] = None,
) -> int:
    return wait_preference(prefer)


WaitSecondsDep = Annotated[int, Depends(get_wait_s)]
