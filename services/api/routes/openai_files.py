"""/v1/files: OpenAI's Files API, for batch input files and the output and error files of batches."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from services.api.errors import NotFound, ValidationFailed
from services.api.multipart import parse_streaming_form
from services.api.openai.files import (
    PURPOSES,
    JsonlSink,
    UploadedFile,
    file_object,
    get_file,
    list_files,
)
from services.api.openai.pages import page
from shared.db.engine import session_scope
from shared.db.models import StoredFile
from shared.storage import ObjectNotFound

router = APIRouter(prefix="/v1/files", tags=["openai"])

_UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": list(PURPOSES)}},
}}}}}


@router.post("", openapi_extra=_UPLOAD_DOC)
async def upload_file(request: Request, tenant: TenantDep, settings: SettingsDep, store: StorageDep) -> dict:
    """A batch input file (JSONL, one request per line), streamed to storage."""

    def open_file(filename: str | None) -> JsonlSink:
        return JsonlSink(store, tenant_id=tenant, filename=filename, max_bytes=settings.batch_max_file_bytes,
                         max_lines=settings.batch_max_lines)

    def discard(files: list[UploadedFile]) -> None:
        for uploaded in files:
            store.delete(uploaded.object_key)

    texts, files = await parse_streaming_form(request, open_file=open_file, text_fields=("purpose",), discard=discard)
    purpose = texts.get("purpose", "").strip()
    problem = None
    if purpose not in PURPOSES:
        problem = ValidationFailed(f"purpose must be one of {', '.join(PURPOSES)}", code="invalid_purpose",
                                   details={"errors": [{"loc": ["purpose"], "message": "invalid purpose"}]})
    elif len(files) != 1:
        problem = ValidationFailed("send exactly one file part", code="invalid_file",
                                   details={"errors": [{"loc": ["file"], "message": "one file part"}]})
    if problem is not None:
        await run_in_threadpool(discard, files)
        raise problem
    (uploaded,) = files
    row = StoredFile(id=uploaded.id, tenant_id=tenant, purpose=purpose, filename=uploaded.filename,
                     object_key=uploaded.object_key, size_bytes=uploaded.size_bytes, line_count=uploaded.line_count)
    return await run_in_threadpool(_insert, settings.resolved_database_url, row)


def _insert(database_url: str, row: StoredFile) -> dict:
    with session_scope(database_url) as session:
        session.add(row)
        session.flush()
        return file_object(row)


@router.get("")
def read_files(
    tenant: TenantDep, session: SessionDep, purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100, after: str | None = None,
) -> dict:
    rows, has_more = list_files(session, tenant, limit=limit, after=after, purpose=purpose)
    return page([file_object(row) for row in rows], has_more)


@router.get("/{file_id}")
def read_file(file_id: str, tenant: TenantDep, session: SessionDep) -> dict:
    return file_object(get_file(session, tenant, file_id))


@router.get("/{file_id}/content", response_class=StreamingResponse,
            responses={200: {"content": {"application/jsonl": {}}, "description": "The file's bytes."}})
def read_file_content(file_id: str, tenant: TenantDep, session: SessionDep, store: StorageDep) -> StreamingResponse:
    row = get_file(session, tenant, file_id)
    try:
        store.size(row.object_key)  # a missing object is a 404 now, not a stream cut short later
    except ObjectNotFound:
        raise NotFound(f"the content of file {file_id} is gone from storage", code="file_not_found") from None
    return StreamingResponse(store.iter_chunks(row.object_key), media_type="application/jsonl",
                             headers={"content-length": str(row.size_bytes)})


@router.delete("/{file_id}")
def delete_file(file_id: str, tenant: TenantDep, session: SessionDep, store: StorageDep) -> dict:
    row = get_file(session, tenant, file_id)
    session.delete(row)
    session.commit()
    store.delete(row.object_key)
    return {"id": file_id, "object": "file", "deleted": True}

