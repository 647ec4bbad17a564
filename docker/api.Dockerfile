# The REST facade (FastAPI + uvicorn). Slim on purpose: the `api` extra has no torch, and only
# the packages the facade imports are copied in (taskspec, preprocess, frontend_api).
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
RUN pip install ".[api]" \
    && useradd --create-home --uid 10001 mtc

USER mtc
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["uvicorn", "frontend_api.app:app", "--host", "0.0.0.0", "--port", "8080", "--proxy-headers"]
