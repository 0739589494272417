#!/usr/bin/env bash
# Write a .env for docker-compose.yaml from .env.example, with every "change-me" secret replaced
# by a fresh random value (and a real Fernet key for Airflow). Refuses to overwrite an existing file.
#
#   docker/gen-env.sh            -> ./.env (mode 600)
#   docker/gen-env.sh OUT_FILE
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$REPO/.env}"
if [[ -e "$OUT" ]]; then
    echo "gen-env: $OUT exists; not overwriting it (delete it first to start over)" >&2
    exit 1
fi
PY="$(command -v python3 || command -v python)"
umask 077
"$PY" - "$REPO/.env.example" "$OUT" <<'PYEOF'
import base64, os, re, secrets, sys
src, out = sys.argv[1], sys.argv[2]
lines = []
for line in open(src):
    m = re.match(r"^([A-Z0-9_]+)=(change-me.*)$", line.strip())
    if m:
        key = m.group(1)
        if key == "AIRFLOW_FERNET_KEY":
            value = base64.urlsafe_b64encode(os.urandom(32)).decode()
        elif key == "DJANGO_SECRET_KEY":
            value = secrets.token_urlsafe(50)
        else:
            value = secrets.token_urlsafe(24)
        line = f"{key}={value}\n"
    lines.append(line)
with open(out, "w") as f:
    f.writelines(lines)
PYEOF
echo "gen-env: wrote $OUT with fresh secrets; review the non-secret settings (ports, host names) in it" >&2
