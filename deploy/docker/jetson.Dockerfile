# syntax=docker/dockerfile:1
# fedlayer SuperExec image for NVIDIA Jetson (Orin, L4T r36 / JetPack 6, aarch64). Build ON the Jetson
# (or with buildx --platform linux/arm64). torch comes from the base image: NVIDIA's NGC PyTorch container
# for integrated GPUs (`-igpu` tags, Python 3.12). The L4T images with Python 3.10 (l4t-pytorch,
# jetson-containers r36) do not fit: Flower 1.31+ (so the pinned 1.39.0) and transformers 5 need
# Python >= 3.11.
#   docker build -f deploy/docker/jetson.Dockerfile -t fedlayer-superexec:jetson .
# Run with the NVIDIA runtime (`runtime: nvidia` in compose, `docker run --runtime nvidia`).
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:24.12-py3-igpu
FROM ${BASE_IMAGE}

RUN (userdel -r ubuntu 2>/dev/null || true) \
    && groupadd --gid 49999 app && useradd --uid 49999 --gid app --create-home app
WORKDIR /app
COPY deploy/docker/install-app.sh /tmp/install-app.sh
COPY pyproject.toml *.md /tmp/fedlayer/
COPY fedcore /tmp/fedlayer/fedcore
COPY server_app /tmp/fedlayer/server_app
COPY client_app /tmp/fedlayer/client_app
RUN KEEP_TORCH=1 PIP_CONSTRAINT= sh /tmp/install-app.sh /tmp/fedlayer && rm -rf /tmp/fedlayer /tmp/install-app.sh \
    && python -c "import platform, torch; assert platform.machine() == 'aarch64' and torch.version.cuda" \
    && mkdir -p /app/cache /app/outputs /app/personal \
    && chown app:app /app /app/cache /app/outputs /app/personal

USER app
# personal layers (PTLS) under /app/personal: mount a volume there so they outlive the container
ENV FEDLAYER_CACHE=/app/cache XDG_DATA_HOME=/app/personal FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["flower-superexec"]
