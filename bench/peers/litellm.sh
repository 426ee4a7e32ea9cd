#!/usr/bin/env bash
# `just bench-peers`: the load suite against LiteLLM proxy, beside the mock
# directly, the relay and the ASGI floor, in one run; prints the ratios.
#
# LiteLLM is not a project dependency: it is installed here into its own
# virtualenv under bench/.peers/ (gitignored). Set LITELLM_VERSION to pin a
# version (the figures in docs/benchmarks.md name the one they used).
# Extra arguments go to `python -m bench.load` (e.g. --suite quick).
set -euo pipefail
cd "$(dirname "$0")/../.."

PEERS_DIR=bench/.peers
VENV="$PEERS_DIR/litellm"
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python}; fi

fail() {
    echo "bench-peers: $*" >&2
    echo "bench-peers: LiteLLM was NOT measured." >&2
    exit 3
}

if [ ! -x "$VENV/bin/litellm" ]; then
    echo "bench-peers: installing LiteLLM proxy into $VENV (its own virtualenv)..." >&2
    mkdir -p "$PEERS_DIR"
    python3 -m venv "$VENV" || fail "could not create a virtualenv in $VENV (python3 -m venv)"
    spec="litellm[proxy]${LITELLM_VERSION:+==$LITELLM_VERSION}"
    if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "$spec" >&2; then
        rm -rf "$VENV"
        fail "could not install '$spec' here (is PyPI reachable?)"
    fi
    [ -x "$VENV/bin/litellm" ] || fail "'$spec' installed no litellm executable"
fi
echo "bench-peers: $("$VENV/bin/pip" show litellm 2>/dev/null | grep -i '^version' || echo 'litellm version unknown')" >&2

# LiteLLM would otherwise fetch its model cost map from the internet at start.
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec "$PYTHON" -m bench.load --suite peers --targets direct,relay,asgi,litellm \
    --litellm-bin "$VENV/bin/litellm" "$@"
