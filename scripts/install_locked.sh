#!/usr/bin/env bash
# Install one lock of requirements/ into a Python environment, every file checked against the
# lock's hashes. Used by `make setup` (requirements/dev.txt) and by the Dockerfile (one lock per image).
#
#   scripts/install_locked.sh PYTHON LOCK [--torch]
#
# --torch: torch and torchvision too, at the versions of requirements/torch.txt:
#   - TORCH_INDEX_URL unset or PyPI: PyPI's build (CUDA-enabled: it brings the nvidia-*, cuda-* and
#     triton wheels, 4 GB, and runs on a CPU all the same), installed with the lock in one
#     hash-checked step;
#   - any other index (https://download.pytorch.org/whl/cpu, the CPU-only build; .../cu130, a GPU
#     worker): the same versions from there, with the dependencies that index gives. Those wheels
#     are other files than PyPI's (e.g. torch-2.14.1+cpu), so PyPI's hashes cannot check them: this
#     one step trusts the index over TLS; the lock that follows is hash-checked as always and puts
#     back the locked version of any shared dependency (sympy, networkx, filelock...).
# Ends with `pip check`: the environment is consistent, torch included.
set -euo pipefail
PY="$1" LOCK="$2" TORCH="${3:-}"
DIR="$(cd "$(dirname "$LOCK")" && pwd)"
# --no-deps: the lock is the whole environment (uv resolved it); pip only checks the hashes, and
# `pip check` at the end proves nothing is missing. (Resolving again trips older pips: pip 23's
# hash mode refuses a dependency with extras such as celery[redis] from the Celery provider.)
PIP=("$PY" -m pip install --quiet --require-hashes --no-deps)
index="${TORCH_INDEX_URL:-}"
case "$index" in ""|https://pypi.org/simple|https://pypi.org/simple/) index="" ;; esac

if [[ "$TORCH" == --torch && -n "$index" ]]; then
    pins=()
    for name in torch torchvision; do
        pin="$(grep -oE "^$name==[^ ]+" "$DIR/torch.txt")" || { echo "install_locked: no $name in $DIR/torch.txt" >&2; exit 1; }
        pins+=("$pin")
    done
    echo "install_locked: ${pins[*]} from $index (not hash-checked: that index's own files)"
    "$PY" -m pip install --quiet --index-url "$index" "${pins[@]}"
    "${PIP[@]}" -r "$LOCK"
elif [[ "$TORCH" == --torch ]]; then
    "${PIP[@]}" -r "$DIR/torch.txt" -r "$LOCK"
else
    "${PIP[@]}" -r "$LOCK"
fi
"$PY" -m pip check
