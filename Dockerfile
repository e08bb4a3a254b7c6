# Two images from one file: `--target api` (no torch) and `--target worker` (torch, transformers).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY services ./services
COPY workers ./workers
COPY migrations ./migrations

FROM base AS api
RUN pip install .
USER 65534
EXPOSE 8000
CMD ["python", "-m", "services.api"]

FROM base AS worker
# For GPUs, install the CUDA build of torch matching your driver instead of the CPU wheel.
RUN pip install ".[worker]"
USER 65534
CMD ["celery", "-A", "workers.inference.celery_app", "worker", "--concurrency", "1", "--pool", "prefork", "--loglevel", "INFO"]
