"""Property-based fuzzing of the facade's OpenAPI schema (schemathesis), in process, with a fake Triton.

Every operation gets generated valid and invalid inputs; no response may be a 5xx, and every
response must match the status codes, content types and bodies the schema declares.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from frontend_api.app import create_app
from frontend_api.settings import ApiSettings
from tests.fakes.frontend_api import FakeTriton, ImageHostTransport, make_artifact_repository

_REPO = make_artifact_repository(Path(tempfile.mkdtemp(prefix="mtc-fuzz-")))


def _image_host(request: httpx.Request) -> httpx.Response:
    # Any URL that passes the policy gets a tiny valid PNG.
    png = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
        b"\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82"
    )
    return httpx.Response(200, content=png, headers={"content-type": "image/png"})


async def _resolver(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


FAKE = FakeTriton()
APP = create_app(
    ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(_REPO),
        s3_endpoint_url="http://127.0.0.1:9000",
        allowed_http_hosts=["127.0.0.1:9000"],
        allowed_image_hosts=["images.example.com"],
    ),
    FAKE,
    image_transport=ImageHostTransport(_image_host),
    resolver=_resolver,
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    )
