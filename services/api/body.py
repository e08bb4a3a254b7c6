"""Read the two body forms of ``POST /v1/jobs`` (and ``/plan``) into a spec and its media."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from services.api.errors import NotFound, UnsupportedMedia, ValidationFailed
from services.api.ingest import MediaIngest, inspect_stored_object, media_failure_error
from services.api.multipart import discard_new_media, parse_media_form
from services.api.request_body import (
    MAX_JSON_BODY,
    parse_body,
    read_capped_body,
    validation_failure,
)
from services.api.schemas import MAX_JOB_MEDIA, InputRef, JobCreate, JobSpec
from services.api.submission import (
    check_media_fits_task,
    known_media,
    object_keys_for,
    refuse_unfetchable_url,
    refuse_unreachable_webhook,
)
from shared.config.settings import ApiSettings
from shared.db.engine import get_engine
from shared.media import StoredMedia
from shared.media.fetch import FetchFailed, FetchLimits, fetch_media
from shared.storage import ObjectNotFound, ObjectStore


@dataclass
class JobBody:
    """A job request as read: its media already stored (multipart) or still named by refs (JSON)."""

    spec: JobSpec
    media: list[StoredMedia] | None = None
    refs: list[InputRef] = field(default_factory=list)


class JobBodyReader:
    """``keep_files=True`` stores uploaded files (job creation); False only inspects them (plans)."""

    def __init__(self, *, settings: ApiSettings, store: ObjectStore, tenant_id: str, keep_files: bool) -> None:
        self.settings, self.store, self.tenant_id, self.keep_files = settings, store, tenant_id, keep_files

    async def read(self, request: Request) -> JobBody:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            return await self._read_multipart(request)
        if content_type in ("application/json", ""):
            return await self._read_json(request)
        raise UnsupportedMedia("send application/json or multipart/form-data", code="unsupported_content_type")

    async def read_resolved(self, request: Request) -> tuple[JobSpec, list[StoredMedia]]:
        """The body with every ref resolved to media (the plan endpoint; job creation batches this)."""
        body = await self.read(request)
        if body.media is not None:
            return body.spec, body.media
        keys, known = await run_in_threadpool(self._lookup, body.refs)
        media = [
            await self.fetch(str(ref.url)) if key is None else known.get(key) or await self.inspect(key)
            for key, ref in zip(keys, body.refs, strict=True)
        ]
        check_media_fits_task(body.spec, media)
        return body.spec, media

    def _new_ingest(self) -> MediaIngest:
        return MediaIngest(
            self.store,
            store_as=self.tenant_id if self.keep_files else None,
            max_bytes=self.settings.max_upload_bytes,
            max_image_bytes=self.settings.max_image_bytes,
            max_image_pixels=self.settings.max_image_pixels,
        )

    async def _read_multipart(self, request: Request) -> JobBody:
        text, media = await parse_media_form(request, new_ingest=self._new_ingest, store=self.store,
                                             max_files=MAX_JOB_MEDIA)
        try:
            if text is None:
                raise ValidationFailed("the multipart body has no 'request' part")
            try:  # the parser of the JSON form, so both forms refuse the same things
                spec = JobSpec.model_validate_json(text)
            except ValidationError as error:
                raise validation_failure(error) from error
            check_media_fits_task(spec, media)
            refuse_unreachable_webhook(spec.webhook, allow_private=self.settings.allow_private_networks)
        except ValidationFailed:
            await run_in_threadpool(discard_new_media, self.store, media)
            raise
        return JobBody(spec, media=media)

    async def _read_json(self, request: Request) -> JobBody:
        body = await read_capped_body(request, MAX_JSON_BODY, "JSON bodies are limited to {limit} bytes; upload media instead")
        try:
            create = await parse_body(JobCreate.model_validate_json, body or b"{}")
        except ValidationError as error:
            raise validation_failure(error) from error
        refs = create.input.refs() if create.input else []
        for ref in refs:
            if ref.url is not None:
                refuse_unfetchable_url(str(ref.url), allow_private=self.settings.allow_private_networks)
        refuse_unreachable_webhook(create.webhook, allow_private=self.settings.allow_private_networks)
        spec = JobSpec.model_validate(create.model_dump(exclude={"input"}))
        if not refs:
            check_media_fits_task(spec, [])
            return JobBody(spec, media=[])
        return JobBody(spec, refs=refs)

    def _lookup(self, refs: list[InputRef]) -> tuple[list[str | None], dict[str, StoredMedia]]:
        with get_engine(self.settings.resolved_database_url).connect() as connection:
            keys = object_keys_for(connection, self.tenant_id, refs)
            return keys, known_media(connection, self.tenant_id, keys)

    async def inspect(self, key: str) -> StoredMedia:
        """An object the API has not seen (written to storage directly): read it through the checks."""
        try:
            return await inspect_stored_object(
                self.store, key,
                max_bytes=self.settings.max_upload_bytes, max_image_bytes=self.settings.max_image_bytes,
                max_image_pixels=self.settings.max_image_pixels,
            )
        except ObjectNotFound as error:
            raise NotFound(f"no object {key!r} in your storage", code="object_not_found") from error

    async def fetch(self, url: str) -> StoredMedia:
        """Media by URL, for a plan: fetched through the same guard and checks as a job's (and stored
        with ``keep_files``, for a plan that must probe a video; the caller discards it after)."""
        store, tenant = (self.store, self.tenant_id) if self.keep_files else (None, None)
        try:
            return await run_in_threadpool(
                partial(fetch_media, url, limits=FetchLimits.from_settings(self.settings), store=store, tenant_id=tenant)
            )
        except FetchFailed as failure:
            raise media_failure_error(failure.code, failure.message, transient=failure.transient) from None
