"""/v1/video-indexes: bulk video indexing (create, progress, videos, segments, search, export, cancel)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.api.deps import (
    CatalogDep,
    LimiterDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    TenantDep,
)
from services.api.errors import Conflict, NotFound, ValidationFailed
from services.api.indexes import (
    all_segments,
    create_index,
    get_index,
    list_segments,
    list_videos,
    read_index_request,
    segment_document,
    thumbnail_url,
    video_document,
)
from services.api.schemas import (
    ErrorPublic,
    IndexVideosPublic,
    SearchPublic,
    SegmentsPublic,
    VideoIndexCreate,
    VideoIndexPublic,
)
from shared.db.documents import index_document
from shared.db.models import IndexSegment
from shared.indexes.export import jsonl, webvtt
from shared.indexes.progress import cancel_index
from shared.indexes.search import search_segments
from shared.storage import ObjectNotFound

router = APIRouter(prefix="/v1/video-indexes", tags=["video indexes"])
_NOT_FOUND = {404: {"model": ErrorPublic, "description": "No such index for this API key's tenant."}}
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/VideoIndexCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["manifest"],
                    "properties": {
                        "manifest": {"type": "string", "format": "binary",
                                     "description": "JSON Lines, one {url|object_key|upload_id, external_id} per line"},
                        "request": {"type": "string", "description": "JSON of the other fields"},
                    },
                }
            },
        },
    }
}
INDEX_SCHEMAS = (VideoIndexCreate,)  # components the documented body refers to (see app.py)


@router.post("", status_code=202, response_model=VideoIndexPublic, openapi_extra=_BODY_DOC, responses={
    429: {"model": ErrorPublic, "description": "`rate_limited`: an index counts as one of the tenant's jobs per "
          "minute; `Retry-After` says when to try again."},
})
async def create(request: Request, response: Response, tenant: TenantDep, settings: SettingsDep,
                 catalog: CatalogDep, session: SessionDep, limiter: LimiterDep) -> VideoIndexPublic:
    await limiter.admit_index(tenant_id=tenant)
    body = await read_index_request(request)
    model_id = catalog.resolve(body.model)
    index = await run_in_threadpool(
        create_index, session, request.app.state.celery, tenant_id=tenant, body=body, model_id=model_id,
        allow_private=settings.allow_private_networks,
    )
    response.headers["Location"] = f"/v1/video-indexes/{index.id}"
    return VideoIndexPublic.model_validate(index_document(index))


@router.get("/{index_id}", response_model=VideoIndexPublic, responses=_NOT_FOUND)
def read(index_id: str, tenant: TenantDep, session: SessionDep) -> VideoIndexPublic:
    return VideoIndexPublic.model_validate(index_document(get_index(session, tenant, index_id)))


@router.post("/{index_id}/cancel", response_model=VideoIndexPublic, responses={
    **_NOT_FOUND, 409: {"model": ErrorPublic, "description": "`video_index_already_finished`."},
})
def cancel(index_id: str, tenant: TenantDep, session: SessionDep) -> VideoIndexPublic:
    """Videos not yet finished are canceled; segments already captioned stay."""
    index = get_index(session, tenant, index_id)
    if not cancel_index(session, index.id):
        raise Conflict(f"video index {index_id} is already {index.status}", code="video_index_already_finished")
    session.commit()
    return VideoIndexPublic.model_validate(index_document(get_index(session, tenant, index_id)))


@router.get("/{index_id}/videos", response_model=IndexVideosPublic, responses=_NOT_FOUND)
def videos(index_id: str, tenant: TenantDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=200)] = 50,
           cursor: str | None = None) -> IndexVideosPublic:
    index = get_index(session, tenant, index_id)
    rows, next_cursor = list_videos(session, index.id, limit=limit, cursor=cursor)
    return IndexVideosPublic(data=[video_document(row) for row in rows], next_cursor=next_cursor)


@router.get("/{index_id}/segments", response_model=SegmentsPublic, responses=_NOT_FOUND)
def segments(index_id: str, tenant: TenantDep, session: SessionDep, external_id: str | None = None,
             limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: str | None = None) -> SegmentsPublic:
    index = get_index(session, tenant, index_id)
    rows, next_cursor = list_segments(session, index.id, external_id=external_id, limit=limit, cursor=cursor)
    return SegmentsPublic(data=[segment_document(index.id, row) for row in rows], next_cursor=next_cursor)


@router.get("/{index_id}/search", response_model=SearchPublic, responses=_NOT_FOUND)
def search(index_id: str, tenant: TenantDep, session: SessionDep, q: Annotated[str, Query(min_length=1, max_length=500)],
           limit: Annotated[int, Query(ge=1, le=200)] = 20) -> SearchPublic:
    """Segments whose text has every word of ``q`` (stemmed), best match first."""
    index = get_index(session, tenant, index_id)
    hits = search_segments(session, index.id, q, limit=limit)
    return SearchPublic(data=[
        {"external_id": hit["external_id"], "start_s": hit["start_s"], "end_s": hit["end_s"], "text": hit["text"],
         "thumbnail_url": thumbnail_url(index.id, hit["id"], hit["thumbnail_key"]), "score": float(hit["score"])}
        for hit in hits
    ])


@router.get("/{index_id}/export", responses={**_NOT_FOUND, 200: {
    "content": {"application/x-ndjson": {}, "text/vtt": {}}, "description": "The segments as a file."}})
def export(index_id: str, tenant: TenantDep, session: SessionDep, format: Literal["jsonl", "vtt"] = "jsonl",
           external_id: str | None = None) -> StreamingResponse:
    index = get_index(session, tenant, index_id)
    if format == "vtt" and external_id is None:
        raise ValidationFailed("a WebVTT export is one video's captions: give external_id", code="external_id_required")
    rows = all_segments(session, index.id, external_id=external_id)
    if format == "vtt":
        return StreamingResponse(webvtt(rows), media_type="text/vtt; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="{index.id}.vtt"'})
    return StreamingResponse(jsonl(rows), media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="{index.id}.jsonl"'})


@router.get("/{index_id}/segments/{segment_id}/thumbnail", responses={**_NOT_FOUND, 200: {
    "content": {"image/jpeg": {}}, "description": "The segment's JPEG thumbnail."}})
def thumbnail(index_id: str, segment_id: int, tenant: TenantDep, session: SessionDep, store: StorageDep) -> Response:
    index = get_index(session, tenant, index_id)
    segment = session.get(IndexSegment, segment_id)
    if segment is None or segment.index_id != index.id or not segment.thumbnail_key:
        raise NotFound(f"no thumbnail for segment {segment_id}", code="thumbnail_not_found")
    try:
        data = store.read(segment.thumbnail_key)
    except ObjectNotFound as error:
        raise NotFound(f"no thumbnail for segment {segment_id}", code="thumbnail_not_found") from error
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
