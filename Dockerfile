# syntax=docker/dockerfile:1
# ml-analytics: two stages. The first builds wheels for the service and all its
# dependencies; the second installs only those into a slim runtime, as a non-root
# user. No secrets are baked in: settings come from the environment at run time.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md topics.yaml ./
COPY ml_analytics ./ml_analytics
RUN python -m pip wheel --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 ML_PORT=8000
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels ml-analytics \
 && useradd --system --uid 10001 --home-dir /app --create-home ml-analytics
WORKDIR /app
USER ml-analytics
EXPOSE 8000
# Liveness only (the process answers); readiness, which also checks PostgreSQL and
# Kafka, is GET /ready for the orchestrator or the load balancer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('ML_PORT', '8000')}/health\", timeout=4)"]
CMD ["ml-analytics", "run"]
