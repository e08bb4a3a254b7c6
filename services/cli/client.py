"""The API as the command line uses it: one authenticated httpx client, errors as API.md shapes them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "canceled")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")


class ApiFailure(Exception):
    def __init__(self, response: httpx.Response) -> None:
        try:
            error = response.json()["error"]
            text = f"{response.status_code} {error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            text = f"{response.status_code}: {response.text[:300]}"
        super().__init__(text)


def default_api_key() -> str | None:
    """VLMQ_API_KEY, else the development key ``make up`` wrote."""
    if os.environ.get("VLMQ_API_KEY"):
        return os.environ["VLMQ_API_KEY"]
    path = Path(os.environ.get("VLMQ_DATA_DIR", ".run")) / "api-key"
    return path.read_text().strip() if path.exists() else None


class Api:
    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float = 120) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise ApiFailure(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self._checked(self.http.get(path, params={k: v for k, v in params.items() if v is not None})).json()

    def submit_job(self, request: dict, files: list[Path]) -> dict:
        parts = [("file", (path.name, path.open("rb"), "application/octet-stream")) for path in files]
        try:
            if parts:
                response = self.http.post("/v1/jobs", files=parts, data={"request": json.dumps(request)})
            else:
                response = self.http.post("/v1/jobs", json=request)
        finally:
            for _, (_, handle, _) in parts:
                handle.close()
        return self._checked(response).json()

    def wait_job(self, job_id: str, *, timeout_s: float, interval_s: float = 0.5) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(f"/v1/jobs/{job_id}")
            if job["status"] in TERMINAL or time.monotonic() > deadline:
                return job
            time.sleep(interval_s)

    def upload(self, path: Path) -> str:
        """A file straight to storage through an upload URL; returns the upload id."""
        created = self._checked(self.http.post("/v1/uploads", json={
            "filename": path.name, "content_type": "application/octet-stream", "size_bytes": path.stat().st_size,
        })).json()
        with path.open("rb") as handle:
            put = httpx.put(created["url"], content=handle, headers=created["headers"], timeout=None)
        if put.status_code >= 400:
            raise ApiFailure(put)
        return created["upload_id"]

    def create_index(self, fields: dict, *, videos: list[dict] | None = None, manifest: Path | None = None) -> dict:
        if manifest is not None:
            with manifest.open("rb") as handle:
                response = self.http.post("/v1/video-indexes", files={"manifest": (manifest.name, handle)},
                                          data={"request": json.dumps(fields)})
        else:
            response = self.http.post("/v1/video-indexes", json={**fields, "videos": videos})
        return self._checked(response).json()

    def follow_index(self, index_id: str, on_change: Callable[[dict], None], *, interval_s: float = 1.0) -> dict:
        seen = None
        while True:
            index = self.get(f"/v1/video-indexes/{index_id}")
            if index != seen:
                on_change(index)
                seen = index
            if index["status"] in TERMINAL:
                return index
            time.sleep(interval_s)

    def download(self, path: str, destination: Path, **params: Any) -> int:
        with self.http.stream("GET", path, params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiFailure(response)
            written = 0
            with destination.open("wb") as sink:
                for chunk in response.iter_bytes():
                    written += sink.write(chunk)
        return written


def videos_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES)
