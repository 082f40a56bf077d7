# speechssl service image: `speechssl serve` (FastAPI + uvicorn) on port 8000.
#
#   docker build -t speechssl .
#   docker run --rm -p 8000:8000 speechssl                                    # CPU, shipped default model
#   docker run --rm --gpus all -p 8000:8000 -v $PWD/runs:/models:ro \
#       -e SPEECHSSL_CHECKPOINT=/models/ctc-1h/best.safetensors speechssl     # GPU, your checkpoint
#   docker compose up                                                        # compose.yaml: GPU, volume
#
# Every setting is a SPEECHSSL_* environment variable (server/settings.py; README "Docker").
# The default base is python:3.11-slim: torch's Linux wheels from PyPI are CUDA builds that
# bring their own CUDA runtime libraries, so the same image runs on a CPU or (with
# `--gpus all` and an NVIDIA driver on the host) on a GPU. BASE_IMAGE may also be a base
# without Python (a plain Debian or a CUDA runtime image): Python then comes from apt.
# scripts/docker-smoke.sh builds this with podman on a local Debian base and checks every route.
ARG BASE_IMAGE=python:3.11-slim

# ---- deps: a virtual environment with the runtime dependencies (no dev extra), in its own stage
# so that a code change neither reinstalls nor re-copies torch (the venv is ~6 GB): only a
# pyproject.toml change (or a new base) rebuilds it.
FROM ${BASE_IMAGE} AS deps
RUN set -eux; \
    if ! command -v python3 >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A stub package with the real metadata (pyproject.toml only: a README edit must not reinstall
# torch), so pip installs exactly the declared dependencies.
COPY pyproject.toml ./
RUN set -eux; \
    mkdir -p speechssl server; touch README.md speechssl/__init__.py server/__init__.py; \
    pip install .; \
    pip uninstall -y speechssl; \
    rm -rf /src/*

# ---- package: the package itself (with its package data, speechssl/assets/*) as a wheel, installed
# once here to check it imports, and once under /pkg (/pkg/opt/venv/...) for the runtime stage to copy.
FROM deps AS package
COPY pyproject.toml README.md ./
COPY speechssl ./speechssl
COPY server ./server
RUN set -eux; \
    pip wheel --no-deps -w /wheels .; \
    pip install --no-deps --root /pkg /wheels/*.whl; \
    pip install --no-deps /wheels/*.whl; \
    cd /; python -c "import speechssl, server.main, soundfile, torch, torchaudio; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'libsndfile', soundfile.__libsndfile_version__)"

# ---- runtime: the base image, the venv and a non-root user; no compiler, no source tree, no apt lists
FROM ${BASE_IMAGE}
RUN set -eux; \
    if ! command -v python3 >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin speechssl; \
    mkdir -p /models
COPY --from=deps /opt/venv /opt/venv
COPY --from=package /pkg/ /
# soundfile's wheel bundles libsndfile (wav, flac, ogg, mp3): no system audio libraries needed.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPEECHSSL_HOST=0.0.0.0 \
    SPEECHSSL_PORT=8000 \
    SPEECHSSL_DEVICE=auto \
    SPEECHSSL_LOG_LEVEL=info
# Checkpoints: mount them here and set SPEECHSSL_CHECKPOINT=/models/<file>.safetensors.
# Unset, the server loads the model shipped in the package (speechssl/assets/default.safetensors).
WORKDIR /home/speechssl
USER speechssl
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SPEECHSSL_PORT', '8000'), timeout=4)"]
CMD ["speechssl", "serve", "--host", "0.0.0.0"]
