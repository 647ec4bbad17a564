"""Property-based fuzzing of the facade's OpenAPI schema (schemathesis), in process, with a fake Triton.

Every operation gets generated valid and invalid inputs; no response may be a 5xx, and every
response must match the status codes, content types and bodies the schema declares. Every request
the schema allows must be accepted (positive data: no 422), and the text pattern the schema
declares is, character by character, the check the validator makes.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from frontend_api.app import create_app
from frontend_api.schemas import NON_BLANK_PATTERN
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


SETTINGS = ApiSettings(
    _env_file=None,  # type: ignore[call-arg]
    model_repository=str(_REPO),
    s3_endpoint_url="http://127.0.0.1:9000",
    allowed_http_hosts=["127.0.0.1:9000"],
    allowed_image_hosts=["images.example.com"],
)
FAKE = FakeTriton()
APP = create_app(SETTINGS, FAKE, image_transport=ImageHostTransport(_image_host), resolver=_resolver)
# The job routes (/v1/jobs...) answer from S3 (their records) and from whether an input exists there: with no S3
# server here they would answer 503 storage-unavailable, and a body valid by the schema is refused (422) when its
# input is not in an allowed bucket. tests/test_api_jobs.py covers them against an S3 mock, hostile input included.
JOB_ROUTES = r"^/v1/jobs"
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path_regex=JOB_ROUTES)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    )


# --- what the validators enforce is what the schema declares ---

POSITIVE = schemathesis.openapi.from_asgi("/openapi.json", APP).include(method="POST").exclude(path_regex=JOB_ROUTES)
POSITIVE.config.generation.update(modes=[GenerationMode.POSITIVE])


@POSITIVE.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_request_the_schema_allows_is_accepted(case: schemathesis.Case[Any]) -> None:
    # Positive data only: a body valid by the published schema must not be refused with 422. Seeded
    # (derandomize), so a disagreement found once is found on every run.
    case.call_and_validate(checks=[not_a_server_error, positive_data_acceptance])


def _whitespace_only(text: str) -> bool:
    return re.search(NON_BLANK_PATTERN, text) is None


def test_the_declared_text_pattern_is_exactly_what_the_validator_checks() -> None:
    # Code point by code point: the schema's pattern finds a non-blank character exactly where str.strip() does.
    # (Surrogates are no text; JSON Schema cannot say so, the validator refuses them as invalid Unicode.)
    disagree = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if not 0xD800 <= code <= 0xDFFF and _whitespace_only(chr(code)) != (chr(code).strip() == "")
    ]
    assert disagree == []
    schema = APP.openapi()["components"]["schemas"]
    for name in ("SentimentRequest", "DisasterRequest"):
        assert schema[name]["properties"]["texts"]["items"]["pattern"] == NON_BLANK_PATTERN
    # the same class read by a JSON Schema validator of another regex dialect (Rust's regex, like pydantic-core)
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": NON_BLANK_PATTERN})
    for code in range(0x3001):
        assert validator.is_valid(chr(code)) == (chr(code).strip() != ""), hex(code)
    assert validator.is_valid("\ufeff") and not validator.is_valid("\u3000 \u00a0\t")


@pytest.mark.parametrize("text", ["\u00a0", " \u2003\n", "\x1c", "\u3000\u205f"])
def test_a_whitespace_only_text_is_refused_by_the_validator_and_by_the_schema(text: str) -> None:
    fake = FakeTriton()
    with TestClient(create_app(SETTINGS, fake), raise_server_exceptions=False) as client:
        response = client.post("/v1/sentiment", json={"texts": ["fine", text]})
        schema = client.get("/openapi.json").json()
    assert response.status_code == 422 and response.json()["errors"][0]["loc"] == ["body", "texts", 1]
    assert fake.calls == []
    item = schema["components"]["schemas"]["SentimentRequest"]["properties"]["texts"]["items"]
    assert not jsonschema_rs.validator_for(item).is_valid(text)
