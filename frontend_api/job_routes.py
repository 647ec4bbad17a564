"""``/v1/jobs``: batch jobs (thin handlers over :class:`~frontend_api.jobs.JobService`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse

from frontend_api.dependencies import auth_dependencies
from frontend_api.errors import (
    AnonymousNotAllowed,
    BodyTooLarge,
    InternalError,
    InvalidRequest,
    NotFound,
    StorageUnavailable,
    Unauthorized,
    problem_responses,
)
from frontend_api.jobs import (
    JobCreate,
    JobFinished,
    JobList,
    JobNotResumable,
    JobService,
    JobsUnavailable,
    JobUploadRequest,
    JobUploadResponse,
    JobView,
    TooManyJobs,
)
from frontend_api.settings import ApiSettings

AUTH_ERRORS = (Unauthorized, AnonymousNotAllowed)


async def get_jobs(request: Request) -> JobService:
    jobs: JobService = request.app.state.jobs
    return jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]


def jobs_router(settings: ApiSettings) -> APIRouter:
    """``POST /v1/jobs/uploads``, ``POST /v1/jobs``, ``GET /v1/jobs``, ``GET|DELETE /v1/jobs/{id}``,
    ``POST /v1/jobs/{id}/resume``, ``GET /v1/jobs/{id}/result``."""
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=auth_dependencies(settings))

    @router.post(
        "/uploads",
        response_model=JobUploadResponse,
        summary="Get a presigned upload form for a job's input file (CSV, JSON Lines, Parquet)",
        description=(
            "POST `multipart/form-data` to `upload_url` with every entry of `fields`, then the file as the field "
            "`file` (at most `max_bytes`, before `expires_in` seconds pass); then start the job with `input`."
        ),
        operation_id="create_job_upload",
        responses=problem_responses(InvalidRequest, BodyTooLarge, *AUTH_ERRORS, StorageUnavailable),
    )
    async def create_job_upload(body: JobUploadRequest, jobs: JobsDep) -> JobUploadResponse:
        return jobs.presign_input(body)

    @router.post(
        "",
        status_code=202,
        response_model=JobView,
        summary="Start a batch job: classify a column of every row of an S3 file or prefix",
        description=(
            "Answers 202 at once with the job (state `queued`) and its URL in `Location`; poll `GET /v1/jobs/{id}`. "
            "The runner reads the input, classifies each row with the served model at batch priority (after "
            "interactive requests) and writes the input plus `label`, `p_<label>` and `error` per row."
        ),
        operation_id="create_job",
        responses=problem_responses(
            InvalidRequest, BodyTooLarge, *AUTH_ERRORS, TooManyJobs, StorageUnavailable, JobsUnavailable
        ),
    )
    async def create_job(body: JobCreate, jobs: JobsDep, response: Response) -> JobView:
        view = await jobs.create(body)
        response.headers["Location"] = view.url
        return view

    @router.get(
        "",
        response_model=JobList,
        summary="The newest jobs, with their state and progress",
        operation_id="list_jobs",
        responses=problem_responses(InvalidRequest, *AUTH_ERRORS, StorageUnavailable),
    )
    async def list_jobs(jobs: JobsDep, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JobList:
        return await jobs.list_jobs(limit)

    @router.get(
        "/{job_id}",
        response_model=JobView,
        summary="A job: state, rows done / total, rate, ETA, output, errors",
        operation_id="get_job",
        responses=problem_responses(*AUTH_ERRORS, NotFound, StorageUnavailable, InternalError),
    )
    async def get_job(job_id: str, jobs: JobsDep) -> JobView:
        return await jobs.get(job_id)

    @router.delete(
        "/{job_id}",
        status_code=202,
        response_model=JobView,
        summary="Cancel a job (it stops at the runner's next report; committed parts are kept)",
        operation_id="cancel_job",
        responses=problem_responses(*AUTH_ERRORS, NotFound, JobFinished, StorageUnavailable),
    )
    async def cancel_job(job_id: str, jobs: JobsDep) -> JobView:
        return await jobs.cancel(job_id)

    @router.post(
        "/{job_id}/resume",
        status_code=202,
        response_model=JobView,
        summary="Resume a failed or cancelled job: a new runner skips the parts already committed in its output",
        description=(
            "Answers 202 with the job (state `queued`, its figures so far) and its URL in `Location`. The new runner "
            "classifies the rest of the input with the model version the job started with; a job whose input "
            "changed since is refused by the runner (the job fails again and says why)."
        ),
        operation_id="resume_job",
        responses=problem_responses(
            *AUTH_ERRORS, NotFound, JobNotResumable, TooManyJobs, StorageUnavailable, JobsUnavailable, InternalError
        ),
    )
    async def resume_job(job_id: str, jobs: JobsDep, response: Response) -> JobView:
        view = await jobs.resume(job_id)
        response.headers["Location"] = view.url
        return view

    @router.get(
        "/{job_id}/result",
        status_code=307,
        response_class=RedirectResponse,
        summary="Download a finished job's output: a redirect to a presigned GET URL of one file",
        operation_id="get_job_result",
        responses={
            307: {"description": "Location: the presigned URL"},
            **problem_responses(*AUTH_ERRORS, NotFound, StorageUnavailable),
        },
    )
    async def get_job_result(job_id: str, jobs: JobsDep) -> RedirectResponse:
        return RedirectResponse(await jobs.result_url(job_id), status_code=307)

    return router
