"""Presigned S3 URLs: the client uploads an image straight to S3, then sends its GET URL to /v1/pose.

Images never pass through the API's request body. Keys are random (``uploads/<uuid>.<ext>``), so a
client cannot choose or overwrite another object's key. A presigned PUT cannot limit the size of
the upload; the facade's byte cap applies when it fetches the image.
"""

from __future__ import annotations

import uuid
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from frontend_api.errors import StorageUnavailable
from frontend_api.schemas import UploadResponse
from frontend_api.settings import ApiSettings

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


def make_s3_client(settings: ApiSettings, *, public: bool = False) -> Any:
    """A boto3 S3 client for an ``s3://`` model repository, or (``public``) for presigning URLs that
    clients use: signed for ``s3_public_endpoint_url`` when set.

    A custom endpoint (moto, MinIO) uses path-style addressing; on AWS, virtual-hosted style.
    """
    addressing = "path" if settings.s3_is_local() else "virtual"
    endpoint = (settings.s3_public_endpoint_url if public else None) or settings.s3_endpoint_url
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.s3_region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=3,
            read_timeout=10,
        ),
    )


def presign_upload(s3: Any, settings: ApiSettings, content_type: str) -> UploadResponse:
    """A PUT URL and the matching GET URL for one new object (signing is local: no request to S3)."""
    key = f"uploads/{uuid.uuid4().hex}.{_EXTENSIONS.get(content_type, 'bin')}"
    params = {"Bucket": settings.upload_bucket, "Key": key}
    try:
        upload_url = s3.generate_presigned_url(
            "put_object",
            Params={**params, "ContentType": content_type},
            ExpiresIn=settings.upload_expires_s,
            HttpMethod="PUT",
        )
        get_url = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=settings.upload_expires_s)
    except (BotoCoreError, ClientError) as exc:  # e.g. no credentials configured
        raise StorageUnavailable(f"cannot sign upload URLs: {exc}") from exc
    return UploadResponse(
        upload_url=str(upload_url),
        method="PUT",
        headers={"Content-Type": content_type},
        get_url=str(get_url),
        key=key,
        expires_in=settings.upload_expires_s,
    )
