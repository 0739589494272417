#!/usr/bin/env bash
# Import a labelled chest X-ray folder as a new DVC data version -- what `make data DATA=<folder>` runs.
#
#   scripts/import_data.sh [FOLDER]          FOLDER (or $DATA; default ../shared/datasets/chest_xray)
#                                            holds {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg|png|dcm
# Steps, as a data engineer would type them:
#   1. rsync FOLDER/ -> data/chest_xray/     (mirror: files gone from FOLDER leave the dataset;
#                                             XRAY_IMPORT_MODE=add only adds/updates files)
#   2. dvc add data/chest_xray               (hash the folder: the hash IS the data version)
#   3. git commit data/chest_xray.dvc        (only the pointer; nothing else staged is committed)
#   4. dvc push  (+ git push when the branch has an upstream, unless XRAY_GIT_PUSH=0)
# Re-running with more (or fewer, or relabelled) images creates a new data version; re-running with
# the same folder changes nothing. The daily DAG picks the new version up on its next run.
#
# Environment: DATA, XRAY_REPO (git+DVC repo to import into; default this repository),
# XRAY_IMPORT_MODE (mirror|add), XRAY_DVC_REMOTE / XRAY_DVC_REMOTE_NAME / XRAY_DVC_S3_ENDPOINT
# (remote selection, see pipeline/data/versioning.py), XRAY_GIT_PUSH, PYTHON (default .venv/bin/python).
set -euo pipefail

PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${1:-${DATA:-$PROJECT/../shared/datasets/chest_xray}}"
REPO="$(cd "${XRAY_REPO:-$PROJECT}" && pwd)"
MODE="${XRAY_IMPORT_MODE:-mirror}"
PY="${PYTHON:-$PROJECT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
DEST="$REPO/data/chest_xray"

if [ ! -d "$SRC" ]; then
  echo "import_data: source folder '$SRC' does not exist" >&2
  exit 2
fi
SRC="$(cd "$SRC" && pwd)"
case "$DEST/" in "$SRC"/*) echo "import_data: refusing to import $SRC into itself" >&2; exit 2;; esac
n_images=$(find -L "$SRC" -type f \( -iname '*.jpeg' -o -iname '*.jpg' -o -iname '*.png' -o -iname '*.dcm' \) | wc -l)
if [ "$n_images" -eq 0 ]; then
  echo "import_data: no images (*.jpeg, *.jpg, *.png, *.dcm) under $SRC" >&2
  exit 2
fi

case "$MODE" in
  mirror) delete=(--delete) ;;
  add)    delete=() ;;
  *) echo "import_data: XRAY_IMPORT_MODE must be mirror or add, not '$MODE'" >&2; exit 2 ;;
esac

echo "import_data: $n_images images from $SRC -> $DEST ($MODE)"
mkdir -p "$DEST"
# -L: copy what symlinks point to (the dataset must be self-contained);
# -c: compare by content, so files dvc re-wrote (new mtimes) are not copied again.
rsync -rLc "${delete[@]}" --exclude '.*' --info=stats1 "$SRC"/ "$DEST"/

cd "$PROJECT"
exec "$PY" -m pipeline.data.versioning --repo "$REPO" publish \
  -m "data: import $(basename "$SRC") ($n_images images, $MODE) on $(date -u +%Y-%m-%dT%H:%MZ)"
