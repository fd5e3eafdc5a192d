# syntax=docker/dockerfile:1
# fedlayer SuperExec image for CUDA clients (x86-64 workstation/server GPUs). torch comes from the base
# image (NVIDIA's NGC PyTorch container: CUDA, cuDNN and a matching torch); pick a tag whose CUDA fits the
# host driver. Run it with the NVIDIA Container Toolkit (`gpus: all` in compose, `--gpus all`).
#   docker build -f deploy/docker/cuda.Dockerfile -t fedlayer-superexec:cuda .
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.01-py3
FROM ${BASE_IMAGE}

RUN (userdel -r ubuntu 2>/dev/null || true) \
    && groupadd --gid 49999 app && useradd --uid 49999 --gid app --create-home app
WORKDIR /app
COPY deploy/docker/install-app.sh /tmp/install-app.sh
COPY pyproject.toml *.md /tmp/fedlayer/
COPY fedcore /tmp/fedlayer/fedcore
COPY server_app /tmp/fedlayer/server_app
COPY client_app /tmp/fedlayer/client_app
# NGC images pin their packages in /etc/pip/constraint.txt; only torch must stay, the rest may move.
RUN KEEP_TORCH=1 PIP_CONSTRAINT= sh /tmp/install-app.sh /tmp/fedlayer && rm -rf /tmp/fedlayer /tmp/install-app.sh \
    && python -c "import torch; assert torch.version.cuda, 'base image torch has no CUDA'" \
    && mkdir -p /app/cache /app/outputs /app/personal \
    && chown app:app /app /app/cache /app/outputs /app/personal

USER app
# personal layers (PTLS) under /app/personal: mount a volume there so they outlive the container
ENV FEDLAYER_CACHE=/app/cache XDG_DATA_HOME=/app/personal FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["flower-superexec"]
