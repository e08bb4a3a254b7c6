"""/v1/uploads: large media straight to storage (presigned PUT; the API takes it for local storage)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from services.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep, json_body
from services.api.errors import Conflict, NotFound, PayloadTooLarge, Unauthorized
from services.api.schemas import UploadCreate, UploadPublic
from shared.db.models import Upload, utcnow
from shared.ids import new_id
from shared.storage import ObjectExists, ObjectNotFound, upload_key

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post("", status_code=201, response_model=UploadPublic, openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": UploadCreate.model_json_schema()}}}})
def create_upload(
    body: Annotated[UploadCreate, json_body(UploadCreate)], request: Request, tenant: TenantDep,
    session: SessionDep, settings: SettingsDep, store: StorageDep,
) -> UploadPublic:
    if body.size_bytes > settings.max_upload_bytes:
        raise PayloadTooLarge(f"uploads are limited to {settings.max_upload_bytes} bytes")
    upload_id = new_id("upl")
    key = upload_key(tenant, upload_id)
    expires_at = utcnow() + timedelta(seconds=settings.upload_url_ttl_s)
    presigned = store.presign_put(key, content_type=body.content_type, expires_s=settings.upload_url_ttl_s)
    token = None
    if presigned is None:
        token = secrets.token_urlsafe(32)
        base = (settings.public_url or str(request.base_url)).rstrip("/")
        presigned = (f"{base}/v1/uploads/{upload_id}/content?token={token}", {"Content-Type": body.content_type})
    url, headers = presigned
    session.add(
        Upload(
            id=upload_id,
            tenant_id=tenant,
            object_key=key,
            filename=body.filename,
            content_type=body.content_type,
            size_bytes=body.size_bytes,
            put_token_sha256=hashlib.sha256(token.encode()).hexdigest() if token else None,
            expires_at=expires_at,
        )
    )
    session.commit()
    return UploadPublic(upload_id=upload_id, url=url, headers=headers, expires_at=expires_at)


@router.put("/{upload_id}/content", status_code=200, include_in_schema=False)
async def put_upload_content(
    upload_id: str, token: str, request: Request, settings: SettingsDep, store: StorageDep, session: SessionDep
) -> Response:
    """The local-storage stand-in for a presigned PUT URL: the token in the URL is the credential,
    good for one complete PUT, as a presigned S3 URL is (``ObjectStore.presign_put``)."""
    upload = await run_in_threadpool(session.get, Upload, upload_id)
    presented = hashlib.sha256(token.encode()).hexdigest()
    if upload is None or upload.put_token_sha256 is None:
        raise NotFound(f"no upload {upload_id}", code="upload_not_found")
    if not hmac.compare_digest(presented, upload.put_token_sha256) or upload.expires_at < utcnow():
        raise Unauthorized("the upload URL is invalid or has expired")
    if await run_in_threadpool(_exists, store, upload.object_key):  # refused before the body is read
        raise _already_written(upload_id)
    limit = min(upload.size_bytes, settings.max_upload_bytes)
    # Exclusive: of two PUTs racing past the check above, the second to finish is refused.
    writer = store.open_writer(upload.object_key, exclusive=True)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"this upload was declared as {upload.size_bytes} bytes")
            await run_in_threadpool(writer.write, chunk)
        await run_in_threadpool(writer.complete)
    except ObjectExists:
        raise _already_written(upload_id) from None
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return Response(status_code=200)


def _exists(store, key: str) -> bool:
    try:
        store.size(key)
    except ObjectNotFound:
        return False
    return True


def _already_written(upload_id: str) -> Conflict:
    # A job may have recorded these bytes' hash and size: they are never replaced.
    return Conflict(f"upload {upload_id} was written already; an upload is written once, ask for a new one",
                    code="upload_already_written")
