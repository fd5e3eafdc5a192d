# syntax=docker/dockerfile:1
# fedlayer SuperExec image for x86-64 CPU machines: runs the ServerApp (server machine) and the ClientApps
# of CPU clients. Build from the repository root:
#   docker build -f deploy/docker/cpu.Dockerfile -t fedlayer-superexec:cpu .
# Built on python:3.12-slim (glibc, a known Python >= 3.11) rather than flwr/superexec, whose default tag
# fixes neither; flwr itself comes pinned to 1.39.0 from pyproject.toml.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
FROM ${PYTHON_IMAGE}

# The CPU wheel first, from PyTorch's CPU index: `pip install .` then finds torch==2.13.0 satisfied
# instead of pulling the multi-GB CUDA build from PyPI.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

# uid 49999 = user `app` of the official Flower images: the same file ownership works for every service.
RUN groupadd --gid 49999 app && useradd --uid 49999 --gid app --create-home app
WORKDIR /app
COPY deploy/docker/install-app.sh /tmp/install-app.sh
COPY pyproject.toml *.md /tmp/fedlayer/
COPY fedcore /tmp/fedlayer/fedcore
COPY server_app /tmp/fedlayer/server_app
COPY client_app /tmp/fedlayer/client_app
RUN sh /tmp/install-app.sh /tmp/fedlayer && rm -rf /tmp/fedlayer /tmp/install-app.sh \
    && mkdir -p /app/cache /app/outputs /app/personal \
    && chown app:app /app /app/cache /app/outputs /app/personal

USER app
# personal layers (PTLS) under /app/personal: mount a volume there so they outlive the container
ENV FEDLAYER_CACHE=/app/cache XDG_DATA_HOME=/app/personal FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["flower-superexec"]
