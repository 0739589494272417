# Sourced by scripts/docker_*.sh and scripts/stack_test.sh: which docker CLI builds with BuildKit.
# BuildKit is needed for the pip CA-bundle build secret. Docker >= 23 CLIs build with BuildKit only
# through the buildx plugin; Debian's docker.io (20.10) CLI has it built in. Pick one that works.
docker_cli() {
    if [[ -n "${DOCKER:-}" ]]; then echo "$DOCKER"; return; fi
    if docker buildx version >/dev/null 2>&1; then echo docker; return; fi
    if [[ -x /usr/bin/docker ]] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.'; then
        echo /usr/bin/docker; return
    fi
    echo docker
}
DOCKER="$(docker_cli)"
export DOCKER_BUILDKIT=1
# the CA bundle the host's pip trusts (a TLS-inspecting proxy's CA lives there): handed to the
# image build as a secret, so it reaches pip without being stored in any layer
pip_cert() {
    local c="${PIP_CERT:-}"
    [[ -z "$c" ]] && c="$(pip config get global.cert 2>/dev/null || true)"
    [[ -z "$c" && -f /etc/ssl/certs/ca-certificates.crt ]] && c=/etc/ssl/certs/ca-certificates.crt
    echo "$c"
}
