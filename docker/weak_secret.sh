# Sourced by shell entry points (postgres has no Python): weak_secret NAME VALUE fails with a
# reason when VALUE is a placeholder or too weak. Same rules as docker/check_secrets.py.
weak_secret() {
    local name="$1" value="$2" lower
    lower="$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')"
    case "$lower" in
        *change-me*|*changeme*|*replace-me*|*example*|*placeholder*)
            echo "refusing to start: $name is a placeholder from .env.example; set a real secret (docker/gen-env.sh)" >&2; return 0 ;;
    esac
    if [ "${#value}" -lt 16 ]; then
        echo "refusing to start: $name is shorter than 16 characters" >&2; return 0
    fi
    if [ "$(printf '%s' "$value" | fold -w1 | sort -u | wc -l)" -lt 8 ]; then
        echo "refusing to start: $name has fewer than 8 distinct characters" >&2; return 0
    fi
    return 1
}
