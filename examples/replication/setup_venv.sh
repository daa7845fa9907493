#!/usr/bin/env bash
# A venv for the replication: rvec's .venv seen through a .pth line, plus TRL and its needs (datasets, pandas,
# pyarrow) installed on top, so that .venv itself is never changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
base="$root/.venv"
venv="$root/.venv-replication"
site_base="$("$base/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
"$base/bin/python" -m venv --without-pip "$venv"
site="$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
echo "import site; site.addsitedir('$site_base')" > "$site/_rvec_base_venv.pth"
"$venv/bin/python" -m pip install -q "trl==1.16.0"
"$venv/bin/python" -c "import trl, rvec_hub, torch, transformers; print('trl', trl.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
