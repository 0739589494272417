#!/usr/bin/env bash
# Compile the locks in requirements/ from pyproject.toml, every one with hashes (uv: `pip install uv`).
#
#   requirements/dev.txt      every extra (serve, train, orchestrate, mlflow-server, test): `make setup`
#   requirements/web.txt      core + serve                  (image web: the site, the API, the PACS worker)
#   requirements/airflow.txt  core + serve, train, orchestrate (image airflow: every component, the workers)
#   requirements/mlflow.txt   the extra mlflow-server alone (image mlflow: the tracking server)
#   requirements/torch.txt    torch, torchvision and the CUDA wheels PyPI's torch build brings
#
# The torch family is locked apart: the images install it from TORCH_INDEX_URL (the CPU or a CUDA
# index), whose wheels are other files than PyPI's, with other hashes (and other dependencies: the
# CPU build needs no nvidia-* wheels). Every other lock leaves it out (--no-emit-package) and keeps
# the dependencies torch shares with the CPU build (sympy, networkx, jinja2, filelock, fsspec...),
# so each installs with --require-hashes; scripts/install_locked.sh does both steps.
#
# Versions: dev.txt is compiled with itself as constraints (-c), so every pin stays unless a change
# in pyproject.toml needs another version (UPGRADE=1: drop the constraints, newest everything);
# the other locks take their versions from dev.txt, the one the tests ran with.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV="${UV:-uv}"
command -v "$UV" >/dev/null || { echo "lock.sh: needs uv (pip install uv, or UV=/path/to/uv)" >&2; exit 1; }
# --universal: one lock for every Python that requires-python allows (3.11 to 3.13: environment
# markers where they differ, e.g. pyyaml-ft on 3.13) and every platform, hashes of every file
common=(--quiet --universal --python-version 3.11 --generate-hashes --no-annotate
        --custom-compile-command "scripts/lock.sh")
# the editable install of the project (`pip install --no-build-isolation -e .`) builds with the
# environment's own setuptools: the build-system's requirements go into the locks that install it
build_in=/tmp/lock-build.$$.in
trap 'rm -f "$build_in" /tmp/lock-train.$$.txt' EXIT
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' > "$build_in"
constraints=()
[[ "${UPGRADE:-0}" == 1 ]] || constraints=(-c requirements/dev.txt -c requirements/torch.txt)

# 1. the torch family: the train extra's resolution, keeping only torch's own wheels
"$UV" pip compile pyproject.toml --extra train "${common[@]}" "${constraints[@]}" -o /tmp/lock-train.$$.txt
awk '/^[A-Za-z0-9]/ { keep = ($1 ~ /^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==/) }
     /^#/ && NR < 4 { print; next }
     keep' /tmp/lock-train.$$.txt > requirements/torch.txt
no_emit=()
for name in $(grep -oE '^[A-Za-z0-9._-]+' requirements/torch.txt); do no_emit+=(--no-emit-package "$name"); done

# 2. the developer lock, then the images' locks, all within its versions
"$UV" pip compile pyproject.toml "$build_in" --all-extras "${common[@]}" "${constraints[@]}" "${no_emit[@]}" \
    -o requirements/dev.txt
"$UV" pip compile pyproject.toml "$build_in" --extra serve "${common[@]}" -c requirements/dev.txt -c requirements/torch.txt "${no_emit[@]}" \
    -o requirements/web.txt
"$UV" pip compile pyproject.toml "$build_in" --extra serve --extra train --extra orchestrate "${common[@]}" \
    -c requirements/dev.txt -c requirements/torch.txt "${no_emit[@]}" -o requirements/airflow.txt
# the MLflow server needs none of the project's own dependencies: the extra's lines alone
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["mlflow-server"]))' \
    | "$UV" pip compile - "${common[@]}" -c requirements/dev.txt -c requirements/torch.txt "${no_emit[@]}" -o requirements/mlflow.txt
for lock in requirements/*.txt; do printf '%-28s %4d packages\n' "$lock" "$(grep -cE '^[A-Za-z0-9]' "$lock")"; done
