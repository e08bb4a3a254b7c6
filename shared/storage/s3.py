"""S3 object store (boto3, path-style addressing, any S3-compatible endpoint)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.storage.base import ObjectExists, ObjectNotFound, StorageError
from shared.storage.keys import check_object_key

# S3's minimum part size is 5 MiB; 8 MiB keeps the API's memory per upload small and bounded.
PART_SIZE = 8 * 1024 * 1024


def _is_missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class S3MultipartWriter:
    """Buffers at most one part; small objects become a single PUT."""

    def __init__(self, client, bucket: str, key: str, *, exclusive: bool = False) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        # S3's conditional write: the object is created only where none is (412 otherwise).
        self._condition = {"IfNoneMatch": "*"} if exclusive else {}
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []

    def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        while len(self._buffer) >= PART_SIZE:
            part = bytes(self._buffer[:PART_SIZE])
            del self._buffer[:PART_SIZE]
            self._upload_part(part)

    def _upload_part(self, body: bytes) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        response = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"ETag": response["ETag"], "PartNumber": number})

    def complete(self) -> None:
        try:
            if self._upload_id is None:
                self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer), **self._condition)
            else:
                if self._buffer:
                    self._upload_part(bytes(self._buffer))
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                    **self._condition,
                )
        except ClientError as error:
            if self._condition and error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise ObjectExists(self._key) from None
            raise
        self._buffer = bytearray()

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            except (ClientError, BotoCoreError):
                pass  # an incomplete multipart upload is invisible; lifecycle rules reclaim it


class S3ObjectStore:
    """``public_endpoint_url``: where clients reach the same store when it differs from where vlmq
    does (compose: ``http://minio:9000`` inside, ``http://localhost:9000`` from the host). Presigned
    URLs are signed for it, since a signature covers the host the client sends."""

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, region: str | None = None,
                 public_endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self._client = self._new_client(endpoint_url, region)
        self._presigner = self._new_client(public_endpoint_url, region) if public_endpoint_url else self._client

    @staticmethod
    def _new_client(endpoint_url: str | None, region: str | None):
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or "us-east-1",
            # SigV4 everywhere: a presigned URL signs its headers, so If-None-Match cannot be dropped.
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                          retries={"max_attempts": 3, "mode": "standard"}),
        )

    # Every method checks its keys first: S3 would store "a/../b" as a literal name, but the same
    # key means another object on a local directory, so neither store accepts it.
    def open_writer(self, key: str, *, exclusive: bool = False) -> S3MultipartWriter:
        return S3MultipartWriter(self._client, self.bucket, check_object_key(key), exclusive=exclusive)

    def size(self, key: str) -> int:
        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=check_object_key(key))["ContentLength"])
        except ClientError as error:
            if _is_missing(error):
                raise ObjectNotFound(key) from error
            raise StorageError(str(error)) from error

    def _get(self, key: str, **extra):
        try:
            return self._client.get_object(Bucket=self.bucket, Key=check_object_key(key), **extra)["Body"]
        except ClientError as error:
            if _is_missing(error):
                raise ObjectNotFound(key) from error
            raise StorageError(str(error)) from error
        except BotoCoreError as error:  # endpoint unreachable, connection reset: worth a retry
            raise StorageError(str(error)) from error

    def read_range(self, key: str, start: int, length: int) -> bytes:
        check_object_key(key)
        if length <= 0:
            return b""
        return self._get(key, Range=f"bytes={start}-{start + length - 1}").read()

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        body = self._get(key)
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def read(self, key: str) -> bytes:
        try:
            return self._get(key).read()
        except BotoCoreError as error:  # the body stream broke off
            raise StorageError(str(error)) from error

    def move(self, source: str, destination: str) -> None:
        check_object_key(source)
        check_object_key(destination)
        try:
            # Managed copy: server-side, multipart above 5 GB.
            self._client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, destination)
        except ClientError as error:
            if _is_missing(error):
                raise ObjectNotFound(source) from error
            raise StorageError(str(error)) from error
        self.delete(source)

    def delete(self, key: str) -> None:
        """Deleting a missing object is a no-op (S3 semantics); failures are StorageError."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=check_object_key(key))
        except (ClientError, BotoCoreError) as error:
            raise StorageError(str(error)) from error

    def presign_put(self, key: str, *, content_type: str, expires_s: int) -> tuple[str, dict[str, str]]:
        url = self._presigner.generate_presigned_url(
            "put_object",
            # Written once: If-None-Match is one of the URL's signed headers, so S3 refuses a PUT
            # without it (403) and a second PUT with it (412), and a job's bytes cannot be replaced.
            Params={"Bucket": self.bucket, "Key": check_object_key(key), "ContentType": content_type,
                    "IfNoneMatch": "*"},
            ExpiresIn=expires_s,
        )
        return url, {"Content-Type": content_type, "If-None-Match": "*"}

    def ping(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"bucket {self.bucket} is not reachable: {error}") from error

    def create_bucket(self) -> None:
        """For development and tests; production buckets are provisioned by the operator."""
        self._client.create_bucket(Bucket=self.bucket)
