#!/bin/sh
# Install the fedlayer app and its dependencies into an image (shared by the three Dockerfiles).
# - flwr stays pinned to 1.39.0 (the last release whose SuperNode speaks gRPC to the SuperLink), without
#   the [simulation] extra: Ray is for local simulation only.
# - KEEP_TORCH=1 (CUDA, Jetson): keep the torch of the base image; pip must neither replace it nor
#   fetch the CPU pin from pyproject.toml.
set -eu
src="$1"
cd "$src"
sed -i 's/"flwr\[simulation\]==1.39.0"/"flwr==1.39.0"/' pyproject.toml
grep -q '"flwr==1.39.0"' pyproject.toml || { echo "install-app.sh: flwr pin not found" >&2; exit 1; }
[ -f README.md ] || echo "# fedlayer" > README.md  # hatchling refuses a missing readme
if [ "${KEEP_TORCH:-0}" = "1" ]; then
    sed -i '/"torch==/d' pyproject.toml
    python -c "import torch; print('torch==' + torch.__version__)" > /tmp/keep-torch.txt
    PIP_CONSTRAINT=/tmp/keep-torch.txt python -m pip install --no-cache-dir .
else
    python -m pip install --no-cache-dir .
fi
python -c "import flwr, torch, transformers, peft; assert flwr.__version__ == '1.39.0', flwr.__version__"
