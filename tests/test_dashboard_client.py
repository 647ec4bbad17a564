"""The dashboard's facade client against an in-process fake server (httpx.MockTransport): requests
sent, responses parsed, and every failure turned into a readable message."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from dashboard.client import ApiError, ApiUnavailable, FacadeClient, UploadError

pytestmark = pytest.mark.anyio

API = "http://facade.test"

TEXT_RESPONSE = {
    "task": "sentiment",
    "model": {"name": "sentiment", "version": 1},
    "predictions": [
        {"text_index": 0, "label": "positive", "probabilities": {"negative": 0.1, "positive": 0.9}},
        {"text_index": 1, "label": "negative", "probabilities": {"negative": 0.8, "positive": 0.2}},
    ],
    "timings_ms": {"tokenize": 1.2, "inference": 5.0, "total": 7.1},
    "future_field": "ignored",
}


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> FacadeClient:
    return FacadeClient(API, transport=httpx.MockTransport(handler))


def problem(status: int, title: str, detail: str) -> httpx.Response:
    body = {"type": f"https://errors.test/{status}", "title": title, "status": status, "detail": detail}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


async def test_classify_texts_posts_the_texts_and_parses_predictions() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=TEXT_RESPONSE)

    result = await client_for(handler).classify_texts("sentiment", ["great", "awful"])

    assert seen[0].method == "POST"
    assert seen[0].url == f"{API}/v1/sentiment"
    assert json.loads(seen[0].content) == {"texts": ["great", "awful"]}
    assert [p.label for p in result.predictions] == ["positive", "negative"]
    assert result.predictions[0].probabilities["positive"] == pytest.approx(0.9)
    assert result.model.version == "1"  # a numeric version is accepted and shown as text
    assert result.timings_ms["total"] == pytest.approx(7.1)


async def test_problem_details_become_a_readable_message() -> None:
    client = client_for(lambda request: problem(503, "Model not ready", "Triton reports sentiment not ready"))

    with pytest.raises(ApiError) as caught:
        await client.classify_texts("sentiment", ["x"])

    assert caught.value.status == 503
    assert caught.value.kind == "https://errors.test/503"
    assert caught.value.message == "Model not ready (HTTP 503): Triton reports sentiment not ready"


async def test_fastapi_validation_list_is_flattened_into_the_message() -> None:
    body = {"detail": [{"loc": ["body", "texts"], "msg": "List should have at least 1 item", "type": "too_short"}]}
    client = client_for(lambda request: httpx.Response(422, json=body))

    with pytest.raises(ApiError) as caught:
        await client.classify_texts("sentiment", [])

    assert caught.value.message == "Unprocessable Entity (HTTP 422): texts: List should have at least 1 item"


async def test_non_json_error_body_still_gives_a_message() -> None:
    client = client_for(lambda request: httpx.Response(502, text="<html>Bad gateway</html>"))

    with pytest.raises(ApiError, match=r"Bad Gateway \(HTTP 502\)"):
        await client.stats()


async def test_unreachable_facade_is_reported_as_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(ApiUnavailable, match=r"http://facade.test is unreachable \(\[Errno 111\] Connection refused\)"):
        await client_for(handler).classify_texts("disaster", ["fire"])


async def test_a_connection_closed_by_the_server_is_retried_once() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"models": []})

    assert await client_for(handler).stats() == []
    assert len(calls) == 2


async def test_malformed_response_is_an_error_not_a_crash() -> None:
    client = client_for(lambda request: httpx.Response(200, json={"task": "sentiment", "predictions": "nope"}))

    with pytest.raises(ApiError, match="cannot read"):
        await client.classify_texts("sentiment", ["x"])


def ticket(max_bytes: int = 10 * 1024 * 1024) -> dict[str, object]:
    """A ``POST /v1/uploads`` answer: a presigned POST with its policy fields and size limit."""
    return {
        "upload_url": "http://storage.test/uploads-bucket",
        "method": "POST",
        "fields": {
            "key": "uploads/abc.jpg",
            "Content-Type": "image/jpeg",
            "policy": "eyJjb25kaXRpb25zIjpbXX0=",
            "x-amz-signature": "f00d",
        },
        "get_url": "http://storage.test/uploads-bucket/uploads/abc.jpg?signature=get",
        "key": "uploads/abc.jpg",
        "expires_in": 300,
        "max_bytes": max_bytes,
    }


def storage(status: int, code: str = "", message: str = "") -> Callable[[httpx.Request], httpx.Response]:
    """The facade hands out :func:`ticket`; storage answers ``status`` (an S3 XML error when ``code``)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/uploads":
            return httpx.Response(200, json=ticket(max_bytes=100))
        if not code:
            return httpx.Response(status)
        body = f"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return httpx.Response(status, text=body, headers={"content-type": "application/xml"})

    return handler


def form_parts(request: httpx.Request) -> list[tuple[str, str | None, bytes]]:
    """(name, filename, value) of each multipart/form-data part, in the order sent."""
    boundary = request.headers["content-type"].split("boundary=", 1)[1].encode()
    parts = []
    for chunk in request.content.split(b"--" + boundary)[1:-1]:
        head, _, value = chunk.removeprefix(b"\r\n").removesuffix(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode().split("\r\n")[0]
        name = disposition.split('name="', 1)[1].split('"', 1)[0]
        filename = disposition.split('filename="', 1)[1].split('"', 1)[0] if "filename=" in disposition else None
        parts.append((name, filename, value))
    return parts


async def test_upload_asks_for_a_presigned_post_then_sends_the_form_to_storage() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/v1/uploads":
            return httpx.Response(200, json=ticket())
        return httpx.Response(204)

    get_url = await client_for(handler).upload_image("photo.jpg", "image/jpeg", b"\xff\xd8jpeg-bytes")

    assert get_url == "http://storage.test/uploads-bucket/uploads/abc.jpg?signature=get"
    ticket_request, post = requests
    assert json.loads(ticket_request.content) == {"filename": "photo.jpg", "content_type": "image/jpeg"}
    assert post.method == "POST"
    assert str(post.url) == "http://storage.test/uploads-bucket"
    assert post.headers["content-type"].startswith("multipart/form-data; boundary=")
    # Every policy field, as given, then the file last (S3 ignores fields after the file).
    assert form_parts(post) == [
        ("key", None, b"uploads/abc.jpg"),
        ("Content-Type", None, b"image/jpeg"),
        ("policy", None, b"eyJjb25kaXRpb25zIjpbXX0="),
        ("x-amz-signature", None, b"f00d"),
        ("file", "photo.jpg", b"\xff\xd8jpeg-bytes"),
    ]


async def test_a_file_above_the_upload_limit_is_refused_before_sending() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=ticket(max_bytes=2 * 1024 * 1024))

    with pytest.raises(UploadError) as caught:
        await client_for(handler).upload_image("huge.png", "image/png", b"0" * (3 * 1024 * 1024 + 1))

    assert caught.value.message == "huge.png is 3.0 MiB; the largest image you can upload is 2.0 MiB."
    assert [r.url.path for r in requests] == ["/v1/uploads"]  # nothing went to storage


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
         "Storage refused the image upload (HTTP 400, EntityTooLarge): the image is larger than the upload limit "
         "of 100 bytes (Your proposed upload exceeds the maximum allowed size)."),
        (403, "AccessDenied", "Invalid according to Policy: Policy expired.",
         "Storage refused the image upload (HTTP 403, AccessDenied): the upload link was refused (it may have "
         "expired) (Invalid according to Policy: Policy expired)."),
        (400, "SomethingNew", "A  message\n over two lines.",
         "Storage refused the image upload (HTTP 400, SomethingNew): A message over two lines."),
        (502, "", "", "Storage refused the image upload (HTTP 502)."),
    ],
)  # fmt: skip
async def test_storage_refusing_the_upload_is_a_readable_upload_error(
    status: int, code: str, message: str, expected: str
) -> None:
    with pytest.raises(UploadError) as caught:
        await client_for(storage(status, code, message)).upload_image("photo.png", "image/png", b"png")

    assert caught.value.message == expected


async def test_a_hostile_storage_error_body_is_not_expanded() -> None:
    # A "billion laughs" body: 10^8 characters if its entities were expanded.
    entities = b"".join(b'<!ENTITY e%d "%s">' % (i, b"&e%d;" % (i - 1) * 10) for i in range(1, 9))
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE Error [<!ENTITY e0 "lol">' + entities + b"]><Error><Code>&e8;</Code></Error>"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/uploads":
            return httpx.Response(200, json=ticket())
        return httpx.Response(400, content=bomb)

    with pytest.raises(UploadError) as caught:
        await client_for(handler).upload_image("photo.png", "image/png", b"png")

    assert caught.value.message == "Storage refused the image upload (HTTP 400)."


async def test_an_old_style_put_ticket_is_an_error_not_a_put() -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        return httpx.Response(200, json={"upload_url": "http://storage.test/u", "method": "PUT", "headers": {},
                                         "get_url": "http://g", "key": "k", "expires_in": 300})  # fmt: skip

    with pytest.raises(ApiError, match=r"cannot read .* in /v1/uploads"):
        await client_for(handler).upload_image("photo.png", "image/png", b"png")
    assert sent == ["POST"]  # only the ticket request


async def test_classify_images_posts_urls_and_top_k_to_the_tasks_route() -> None:
    seen: list[tuple[str, dict[str, object]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(
            200,
            json={
                "task": "pose",
                "model": {"name": "pose", "version": "2"},
                "predictions": [
                    {
                        "image_index": 0,
                        "label": "running",
                        "probabilities": {"running": 0.7, "cycling": 0.2, "eating": 0.1},
                        "top_k": [{"label": "running", "probability": 0.7}, {"label": "cycling", "probability": 0.2}],
                    }
                ],
                "timings_ms": {"fetch": 2.0, "preprocess": 3.0, "inference": 10.0, "total": 16.0},
            },
        )

    result = await client_for(handler).classify_images("pose", ["http://storage.test/g"], top_k=2)

    assert seen == [("/v1/pose", {"image_urls": ["http://storage.test/g"], "top_k": 2})]
    assert [item.label for item in result.predictions[0].top_k] == ["running", "cycling"]


async def test_stats_and_health() -> None:
    stats_body = {
        "models": [
            {
                "task": "sentiment",
                "version": "1",
                "ready": True,
                "request_success": 10,
                "request_failure": 1,
                "inference_count": 12,
                "execution_count": 4,
                "avg_queue_ms": 0.8,
                "avg_compute_ms": 3.1,
                "batch_sizes": {"1": 2, "4": 2},
            }
        ]
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/stats":
            return httpx.Response(200, json=stats_body)
        return problem(503, "Not ready", "Triton is not ready")

    client = client_for(handler)
    (stats,) = await client.stats()
    assert stats.batch_sizes == {"1": 2, "4": 2}
    assert stats.request_failure == 1
    health = await client.health()
    assert not health.ready
    assert "Triton is not ready" in health.detail

    assert (await client_for(lambda request: httpx.Response(200, json={"status": "ready"})).health()).ready


async def test_models_lists_tasks_with_version_and_readiness() -> None:
    body = {
        "models": [
            {"task": "pose", "title": "Human pose / action", "modality": "image", "model": "pose", "version": None,
             "labels": ["calling"], "ready": False, "max_items": 16},
            {"task": "sentiment", "title": "Movie-review sentiment", "modality": "text", "model": "sentiment",
             "version": "2", "labels": ["negative", "positive"], "ready": True, "max_items": 64},
        ]
    }  # fmt: skip
    models = await client_for(lambda request: httpx.Response(200, json=body)).models()

    assert [(m.task, m.version, m.ready) for m in models] == [("pose", None, False), ("sentiment", "2", True)]
    assert [(m.title, m.modality, m.max_items) for m in models] == [
        ("Human pose / action", "image", 16),
        ("Movie-review sentiment", "text", 64),
    ]
    assert models[1].labels == ["negative", "positive"]
    assert models[1].examples == []  # not listed by the facade (yet)


async def test_a_model_without_labels_or_limit_cannot_build_a_tab() -> None:
    body = {"models": [{"task": "x", "title": "X", "modality": "text", "labels": [], "max_items": 0}]}

    with pytest.raises(ApiError, match=r"cannot read \(2 problem\(s\) in /v1/models\)"):
        await client_for(lambda request: httpx.Response(200, json=body)).models()


async def test_the_facades_own_models_example_is_what_the_dashboard_reads() -> None:
    # The seam: the facade's documented /v1/models answer parses into the models the tabs are built from.
    from frontend_api.schemas import ModelsResponse

    example = ModelsResponse.model_json_schema()["examples"][0]
    models = await client_for(lambda request: httpx.Response(200, json=example)).models()

    assert [m.task for m in models] == [m["task"] for m in example["models"]]
    assert all(m.max_items > 0 and m.labels and m.modality in ("text", "image") for m in models)


async def test_the_api_key_goes_to_the_facade_but_not_to_storage() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/uploads":
            return httpx.Response(200, json=ticket())
        return httpx.Response(204)

    client = FacadeClient(API, api_key="s3cret", transport=httpx.MockTransport(handler))
    await client.upload_image("a.jpg", "image/jpeg", b"jpeg")

    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in seen[1].headers


async def test_resume_posts_to_the_jobs_resume_route_and_parses_the_queued_job() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": "0123456789ab0123456789ab", "state": "queued", "task": "sentiment"})

    job = await client_for(handler).resume_job("0123456789ab0123456789ab")

    assert [(r.method, str(r.url)) for r in seen] == [("POST", f"{API}/v1/jobs/0123456789ab0123456789ab/resume")]
    assert (job.id, job.state) == ("0123456789ab0123456789ab", "queued")
