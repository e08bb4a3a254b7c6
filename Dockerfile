# vlmq's images, one target per process role (docker-compose.yml and the Helm chart use them):
#   api         API, notifier and frames worker (no torch); the chart's ghcr.io/vlmq/vlmq-api
#   migrate     the api image whose command is `alembic upgrade head` (a one-shot compose service)
#   worker      the GPU inference worker: CUDA torch and flash-attn; the chart's ghcr.io/vlmq/vlmq-worker
#   worker-cpu  the inference worker on CPU torch, for the tiny model (compose's cpu profile)
# Model weights are never part of an image: they are mounted read-only at /models, and hub downloads
# (VLMQ_HUB_DOWNLOAD) go to a volume at /var/cache/vlmq. The images run as uid 10001; nothing but
# those volumes and /tmp is written at run time, so an orchestrator may pick another uid (the chart does).

# The torch build every inference image installs: pyproject.toml and the Makefile pin the same version.
ARG TORCH_VERSION=2.13.0
# PyPI's Linux torch 2.13.0 wheel is the CUDA 13.0 build: it brings CUDA's and cuDNN's libraries as
# wheels (cuda-toolkit 13.0.3, nvidia-cudnn-cu13), so the GPU image needs no CUDA libraries of its own
# and a driver of 580 or newer. For an older driver, build with a CUDA 12 torch from PyTorch's index
# (e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128) and nvidia/cuda 12.8 images in the two
# FROM lines below: nvcc in flash-attn-build must have torch's CUDA major version.
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu


# The repository's code, copied once for every target.
FROM scratch AS source
COPY pyproject.toml alembic.ini /app/
COPY shared /app/shared
COPY services /app/services
COPY workers /app/workers
COPY migrations /app/migrations


FROM python:3.11.14-slim-bookworm AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/var/cache/vlmq/huggingface \
    VLMQ_HUB_CACHE_DIR=/var/cache/vlmq/hub \
    VLMQ_DATA_DIR=/var/lib/vlmq
# /models is created owned by vlmq so that a fresh named volume mounted there (the tiny model's)
# starts writable; hub downloads and the embedded-defaults data directory live under /var.
RUN groupadd --system --gid 10001 vlmq \
    && useradd --system --uid 10001 --gid vlmq --create-home --shell /usr/sbin/nologin vlmq \
    && install -d -o vlmq -g vlmq /models /var/cache/vlmq /var/lib/vlmq
WORKDIR /app


FROM python-base AS api
# Dependencies first, from pyproject.toml alone, so that a code change does not reinstall them.
COPY pyproject.toml /tmp/vlmq-deps/
RUN pip install /tmp/vlmq-deps && rm -rf /tmp/vlmq-deps
COPY --from=source /app /app
# Installed as well as kept in /app: alembic reads migrations/ from /app, and `vlmq` gets its script.
RUN pip install --no-deps . && rm -rf build ./*.egg-info
USER 10001:10001
EXPOSE 8000
# The API serves /healthz on VLMQ_API_PORT; the notifier and the frames worker, run from this image,
# serve theirs on VLMQ_METRICS_PORT, which the API never sets. Slim images have no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('VLMQ_METRICS_PORT') or os.environ.get('VLMQ_API_PORT', '8000'); urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]
CMD ["python", "-m", "services.api"]


# Migrations are an explicit step, never a side effect of starting the API (the chart runs the same
# command in the api image as a hook Job).
FROM api AS migrate
HEALTHCHECK NONE
CMD ["python", "-m", "alembic", "upgrade", "head"]


FROM python-base AS worker-cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX_URL
# torch before the worker extra, from the CPU index: PyPI's Linux wheel would pull in CUDA.
RUN pip install --index-url "${TORCH_CPU_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml /tmp/vlmq-deps/
RUN pip install "/tmp/vlmq-deps[worker]" && rm -rf /tmp/vlmq-deps
COPY --from=source /app /app
RUN pip install --no-deps . && rm -rf build ./*.egg-info
ENV VLMQ_METRICS_PORT=9100
USER 10001:10001
# The worker's metrics server answers /healthz once the worker is up (models load in its children).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['VLMQ_METRICS_PORT'] + '/healthz', timeout=8)"]
CMD ["celery", "-A", "workers.inference.celery_app", "worker", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO"]


# flash-attn is compiled here (nvcc, headers, a C++ compiler) and only its wheel reaches the worker.
# Python is Ubuntu 24.04's own 3.12 (vlmq needs 3.11 or newer): no third-party package archive,
# security updates from Ubuntu, and the same interpreter in this stage and in the worker, which the
# wheel's ABI needs.
FROM nvidia/cuda:13.0.2-devel-ubuntu24.04 AS flash-attn-build
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG FLASH_ATTN_VERSION=2.8.3.post2
# Ampere (sm_80, which also runs on sm_86/sm_89 cards) and Hopper; add 100;120 for Blackwell.
ARG FLASH_ATTN_CUDA_ARCHS="80;90"
# Parallel compile jobs, each taking several GiB of memory (more with more NVCC_THREADS): lower
# both on a small builder.
ARG MAX_JOBS=4
ARG NVCC_THREADS=2
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# Ubuntu's archive keeps only each package's latest build: the image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential python3.12-dev python3.12-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install setuptools==80.9.0 wheel==0.45.1 packaging==25.0 ninja==1.13.0 psutil==7.1.0
# Built against the torch above (--no-build-isolation), never a prebuilt wheel fetched by setup.py.
RUN FLASH_ATTENTION_FORCE_BUILD=TRUE pip wheel --no-build-isolation --no-deps \
        --wheel-dir /wheels "flash-attn==${FLASH_ATTN_VERSION}"


# CUDA's base image only: torch's wheels carry the CUDA libraries, the NVIDIA container toolkit mounts
# the driver, and this image's NVIDIA_* variables ask it to.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS worker
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/var/cache/vlmq/huggingface \
    VLMQ_HUB_CACHE_DIR=/var/cache/vlmq/hub \
    VLMQ_DATA_DIR=/var/lib/vlmq \
    VLMQ_METRICS_PORT=9100
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv \
    && groupadd --system --gid 10001 vlmq \
    && useradd --system --uid 10001 --gid vlmq --create-home --shell /usr/sbin/nologin vlmq \
    && install -d -o vlmq -g vlmq /models /var/cache/vlmq /var/lib/vlmq
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# The wheel is bind-mounted, not copied, so it adds no layer of its own.
RUN --mount=type=bind,from=flash-attn-build,source=/wheels,target=/tmp/wheels \
    pip install /tmp/wheels/flash_attn-*.whl
WORKDIR /app
COPY pyproject.toml /tmp/vlmq-deps/
RUN pip install "/tmp/vlmq-deps[worker]" && rm -rf /tmp/vlmq-deps
COPY --from=source /app /app
RUN pip install --no-deps . && rm -rf build ./*.egg-info
USER 10001:10001
# Model loading runs in the worker's children and can take minutes; /healthz answers meanwhile.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['VLMQ_METRICS_PORT'] + '/healthz', timeout=8)"]
CMD ["celery", "-A", "workers.inference.celery_app", "worker", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO"]
