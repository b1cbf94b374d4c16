"""Blobs in an S3-compatible bucket, shared by every front.

boto3, called synchronously: the ``BlobStore`` seam is synchronous and retouch already calls it
off the event loop (the imaging pool for ``put``, ``asyncio.to_thread`` for ``get`` and the
sweep), one boto3 client is thread-safe, and a GET of a 4 MB image measured 14-21 ms against
SeaweedFS (faster than aioboto3's round trip; see docs/deployment.md). Credentials are boto3's
standard chain (environment, ``~/.aws``, instance or pod roles).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from retouch.config import S3Settings
from retouch.storage.base import Blob, new_key, parse_key

log = logging.getLogger(__name__)

_RULE_ID = "retouch-blob-expiry"
_PRESIGN_MAX_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week


class S3BlobStore:
    def __init__(self, settings: S3Settings) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        config = Config(
            signature_version="s3v4",  # without it, custom endpoints get SigV2 query strings
            s3={"addressing_style": settings.addressing_style},
            max_pool_connections=settings.max_connections,
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
        )
        # A session of its own: boto3's default session caches the credentials it first found.
        session = boto3.session.Session()
        self._s3: Any = session.client(
            "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
        )
        if settings.presign_endpoint_url:
            self._signer: Any = session.client(
                "s3",
                endpoint_url=settings.presign_endpoint_url,
                region_name=settings.region,
                config=config,
            )
        else:
            self._signer = self._s3
        from botocore.exceptions import ClientError

        self._client_error = ClientError

    # -- start-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check the bucket is reachable (creating it when allowed) and install the lifecycle
        rule when configured; raises with a message naming the bucket and endpoint."""
        where = f"bucket {self.bucket!r} at {self.settings.endpoint_url or 'AWS S3'}"
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except self._client_error as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound") or not self.settings.create_bucket:
                raise RuntimeError(f"S3 {where}: {exc}") from exc
            self._create_bucket()
            log.info("created S3 %s", where)
        if self.settings.lifecycle_days is not None:
            self._install_lifecycle(self.settings.lifecycle_days)

    def _install_lifecycle(self, days: int) -> None:
        """Put our rule beside the bucket's other rules (the call replaces the whole set)."""
        try:
            rules = self._s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except self._client_error as exc:
            if _code(exc) != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        ours = {"ID": _RULE_ID, "Filter": {"Prefix": self.prefix}, "Status": "Enabled",
                "Expiration": {"Days": days}}  # fmt: skip
        rules = [r for r in rules if r.get("ID") != _RULE_ID] + [ours]
        self._s3.put_bucket_lifecycle_configuration(
            Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
        )

    def _create_bucket(self) -> None:
        region = self._s3.meta.region_name
        args: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":  # AWS refuses a constraint naming us-east-1
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._s3.create_bucket(**args)
        except self._client_error as exc:  # another front created it first
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    # -- BlobStore ------------------------------------------------------------------------------

    def put(self, data: bytes, *, content_type: str, extension: str, expires_at: int) -> str:
        key = new_key(content_type=content_type, extension=extension, expires_at=expires_at)
        self._s3.put_object(
            Bucket=self.bucket,
            Key=self.prefix + key,
            Body=data,
            ContentType=content_type,
            CacheControl="private, max-age=3600",
        )
        return key

    def get(self, key: str) -> Blob | None:
        parsed = parse_key(key)
        if parsed is None or parsed.expires_at < time.time():
            return None
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self._client_error as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        body = obj["Body"]
        try:
            return Blob(body.read(), parsed.content_type)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        if parse_key(key) is not None:
            self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def sweep(self, now: int) -> int:
        """Delete expired objects. Keys start with their zero-padded expiry and S3 lists in
        key order, so the listing stops at the first key that is still live."""
        deleted = 0
        expired: list[dict[str, str]] = []
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        done = False
        for page in pages:
            for item in page.get("Contents", []):
                parsed = parse_key(item["Key"][len(self.prefix) :])
                if parsed is None:
                    continue
                if parsed.expires_at >= now:
                    done = True
                    break
                expired.append({"Key": item["Key"]})
                if len(expired) == 1000:  # DeleteObjects takes at most 1000 keys
                    deleted += self._delete_many(expired)
                    expired = []
            if done:
                break
        if expired:
            deleted += self._delete_many(expired)
        return deleted

    def _delete_many(self, objects: list[dict[str, str]]) -> int:
        reply = self._s3.delete_objects(
            Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
        )
        errors = reply.get("Errors", [])
        for err in errors[:3]:
            log.warning("could not delete %s: %s", err.get("Key"), err.get("Message"))
        return len(objects) - len(errors)

    def direct_url(self, key: str, expires_at: int) -> str | None:
        if not self.settings.presign:
            return None
        ttl = max(1, min(_PRESIGN_MAX_S, expires_at - int(time.time())))
        url: str = self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.prefix + key}, ExpiresIn=ttl
        )
        return url

    def close(self) -> None:
        self._s3.close()
        if self._signer is not self._s3:
            self._signer.close()


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
