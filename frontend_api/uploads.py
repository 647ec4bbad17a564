"""Presigned S3 uploads: the client uploads an image straight to S3, then sends its GET URL to an image route
(``/v1/pose``).

Images never pass through the API's request body. The upload is a presigned POST (an S3 "browser
upload" form) whose signed policy fixes the key, the bucket and the ``Content-Type``, limits the
size to ``[1, image_max_bytes]`` (``content-length-range``: S3 itself refuses larger files) and
expires after ``upload_expires_s``. A policy lists every form field the upload may carry, so S3
also refuses any other field, such as a ``Content-Encoding``. Keys are random
(``uploads/<uuid>.<ext>``): a client cannot choose or overwrite another object's key. The
facade's own byte cap and encoding check still apply when it fetches the image.
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
from preprocess.image import image_format


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


def presigned_form(
    s3: Any, bucket: str, key: str, content_type: str, max_bytes: int, expires_s: int
) -> tuple[dict[str, Any], str]:
    """A presigned POST form for one new object (type and identity encoding pinned, 1..``max_bytes`` bytes) and
    its presigned GET URL; signing is local (no request to S3). Raises :class:`StorageUnavailable`."""
    try:
        # The GET first: without credentials it raises NoCredentialsError, where botocore's POST signer
        # would fail with an AttributeError.
        get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s)
        post = s3.generate_presigned_post(
            Bucket=bucket,
            Key=key,
            Fields={"Content-Type": content_type, "Content-Encoding": "identity"},
            Conditions=[
                {"Content-Type": content_type},
                # Pinned, not just unlisted: some S3 servers (SeaweedFS 4.48) store form fields the policy omits.
                {"Content-Encoding": "identity"},
                ["content-length-range", 1, max_bytes],
            ],
            ExpiresIn=expires_s,
        )
    except (BotoCoreError, ClientError) as exc:  # e.g. no credentials configured
        raise StorageUnavailable(f"cannot sign upload URLs: {exc}") from exc
    return post, str(get_url)


def presign_upload(s3: Any, settings: ApiSettings, content_type: str) -> UploadResponse:
    """A presigned POST (form upload) and the GET URL for one new object (signing is local: no request to S3)."""
    known = image_format(content_type)
    key = f"uploads/{uuid.uuid4().hex}.{known.extension if known is not None else 'bin'}"
    post, get_url = presigned_form(
        s3, settings.upload_bucket, key, content_type, settings.image_max_bytes, settings.upload_expires_s
    )
    return UploadResponse(
        upload_url=str(post["url"]),
        fields={str(name): str(value) for name, value in post["fields"].items()},
        get_url=str(get_url),
        key=key,
        expires_in=settings.upload_expires_s,
        max_bytes=settings.image_max_bytes,
    )
