#!/usr/bin/env bash
# Create .venv-mergekit: mergekit 0.1.5 on the CPU build of torch 2.13.0, the baseline the benchmarks
# compare rvec against (`mergekit-yaml`, `mergekit-extract-lora`). Safe to run again: it only installs
# what is missing and checks the result.
#
#   bash bench/setup_mergekit.sh            # creates /work/main/.venv-mergekit (or $MERGEKIT_VENV)
#   .venv-mergekit/bin/mergekit-yaml --help
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MERGEKIT_VENV:-$ROOT/.venv-mergekit}"
PYTHON="${PYTHON:-python3.11}"
MERGEKIT_VERSION="0.1.5"
TORCH_VERSION="2.13.0"
WHEELS="${TORCH_WHEELS:-/opt/wheels}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# torch is pinned to its CPU build by a constraint, so that no dependency of mergekit can pull a CUDA
# build; torchvision/torchaudio are never installed (mergekit does not import them). The wheel comes from
# the local wheel folder, or else from PyTorch's CPU index.
CONSTRAINTS="$VENV/rvec-constraints.txt"
printf 'torch==%s+cpu\n' "$TORCH_VERSION" > "$CONSTRAINTS"
SOURCES=(--find-links "$WHEELS")
if ! ls "$WHEELS"/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
    SOURCES+=(--extra-index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
fi

have() { "$VENV/bin/python" - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
name, want = sys.argv[1], sys.argv[2]
try:
    sys.exit(0 if version(name).split("+")[0] == want else 1)
except PackageNotFoundError:
    sys.exit(1)
EOF
}

if ! have torch "$TORCH_VERSION"; then
    "${PIP[@]}" install "${SOURCES[@]}" -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
fi
if ! have mergekit "$MERGEKIT_VERSION"; then
    "${PIP[@]}" install "${SOURCES[@]}" -c "$CONSTRAINTS" "mergekit==$MERGEKIT_VERSION"
fi

"$VENV/bin/python" - "$TORCH_VERSION" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

import torch

problems = []
if torch.__version__.split("+")[0] != sys.argv[1]:
    problems.append(f"torch is {torch.__version__}, expected {sys.argv[1]}")
if torch.version.cuda is not None:
    problems.append(f"torch is a CUDA build ({torch.version.cuda})")
for name in ("torchvision", "torchaudio", "torchcodec"):
    try:
        problems.append(f"{name} {version(name)} is installed")
    except PackageNotFoundError:
        pass
import mergekit  # noqa: E402,F401

if problems:
    sys.exit("setup_mergekit: " + "; ".join(problems))
print(f"mergekit {version('mergekit')} on torch {torch.__version__} ready")
EOF
echo "$VENV"
