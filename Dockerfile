# speechssl service image.
#   docker build -t speechssl .                      (python:3.11-slim base; torch wheels bring CUDA libs)
#   docker run -p 8000:8000 -e SPEECHSSL_CHECKPOINT=/models/m.safetensors -v $PWD/runs:/models speechssl
# Every setting is a SPEECHSSL_* environment variable (see server/settings.py).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# A Debian base without Python (the local podman check) gets it from apt; python images skip this.
RUN command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY speechssl ./speechssl
COPY server ./server
RUN pip install .

FROM ${BASE_IMAGE}
RUN (command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*)) \
    && apt-get update && apt-get install -y --no-install-recommends libsndfile1 && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 speechssl
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH SPEECHSSL_HOST=0.0.0.0 SPEECHSSL_PORT=8000 PYTHONUNBUFFERED=1
USER speechssl
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["speechssl", "serve", "--host", "0.0.0.0"]
