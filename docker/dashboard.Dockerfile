# The Panel dashboard. It talks to the facade only (MTC_DASHBOARD_API_URL): no model code here.
# Build context: the repository root (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY taskspec/ taskspec/
COPY dashboard/ dashboard/
RUN pip install ".[dashboard]" \
    && useradd --create-home --uid 10001 mtc

USER mtc
EXPOSE 5006
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5006/app', timeout=2)"]
# Inside the container the page is served on every interface (the port is published by compose): beyond
# loopback, so `python -m dashboard` refuses to start without MTC_DASHBOARD_USERNAME / _PASSWORD.
# Websocket origins come from MTC_DASHBOARD_ORIGINS (comma-separated host:port list) at run time.
ENV MTC_DASHBOARD_ADDRESS=0.0.0.0 \
    MTC_DASHBOARD_PORT=5006
CMD ["python", "-m", "dashboard"]
