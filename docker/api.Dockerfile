# The REST facade (FastAPI + uvicorn). Slim on purpose: the `api` extra has no torch, and only
# the packages it runs are copied in: taskspec, preprocess, frontend_api, batch (the job API reads its job records,
# batch/jobstate.py: pydantic only), and export for compose's models-init job (`python -m export push` needs boto3
# only; training and ONNX export are never imported here). Without the `batch` extra (Ray) in the image, the job
# API answers 503 jobs-unavailable: run jobs from a host or image that has it (docs/batch.md).
# Build context: the repository root (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY taskspec/ taskspec/
COPY preprocess/ preprocess/
COPY frontend_api/ frontend_api/
COPY batch/ batch/
COPY export/ export/
RUN pip install ".[api]" \
    && useradd --create-home --uid 10001 mtc

# Inside the container the facade listens on every interface (the port is published by compose):
# beyond loopback, so `python -m frontend_api` refuses to start without MTC_API_API_KEYS.
ENV MTC_API_HOST=0.0.0.0 \
    MTC_API_PORT=8080

USER mtc
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# The checked launcher: settings validated (keys, bind address) before anything listens.
CMD ["python", "-m", "frontend_api"]
