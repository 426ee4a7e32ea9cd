# Everyday commands. Run them through `.ci/env` on a fresh machine
# (`.ci/env just test`); inside the venv plain `just test` works.

default:
    @just --list

# Start the relay (embedded PostgreSQL unless CODER_PG_CONNECTION_URL is set).
serve *ARGS:
    relay serve {{ARGS}}

# Start the relay against the bundled mock upstream with a demo token.
demo:
    relay serve --demo

# Lint, type-check, install the pinned agent CLIs and the browser, then run the whole test suite.
test *ARGS: lint clients browser
    python -m pytest -q {{ARGS}}

# Codex and Claude Code as clients/package-lock.json pins them (the e2e tests drive them).
clients:
    bash .ci/clients

# Debian's chromium (/usr/bin/chromium) for the console's browser tests (tests/console/).
browser:
    bash .ci/browser

# The console's browser tests, writing a screenshot of each page into docs/img/console/.
screenshots: browser
    RELAY_CONSOLE_SCREENSHOTS=docs/img/console python -m pytest -q tests/console

# ruff, mypy, and the import contracts of pyproject.toml (the layers of docs/architecture.md).
lint:
    ruff check relay bench tests
    ruff format --check relay bench tests
    mypy
    lint-imports

# Re-resolve uv.lock after changing pyproject.toml (`just lock --upgrade` moves every pin).
lock *ARGS:
    uv lock {{ARGS}}

fmt:
    ruff format relay bench tests
    ruff check --fix relay bench tests

# Load suite (mock direct, both floors, the relay; pinned): bench/results/<time>/.
bench *ARGS:
    python -m bench.load {{ARGS}}

# A shorter load run, e.g. `just load --targets direct,relay --concurrency 64`.
load *ARGS:
    python -m bench.load --suite quick {{ARGS}}

# The same load against LiteLLM proxy (installed into bench/.peers/), with ratios.
bench-peers *ARGS:
    bash bench/peers/litellm.sh {{ARGS}}

# Recorder: COPY rows/s, what a SIGKILL loses, latency with PostgreSQL down vs up (~1 min).
bench-recorder:
    python -m bench.bench_recorder
    python -m bench.bench_recorder_latency

# Regenerate docs/configuration.md, relay/option_fields.py and relay/schemas/json from the code.
generate:
    python -m relay.options --markdown > docs/configuration.md
    python -m relay.options --write-fields
    python -m relay.record.events --write-schemas

# e.g. just replay /var/dumps --repeat 10 --concurrency 50 --speed 0 --check-usage
# Replay captured dumps through a relay started for it (or --relay URL --token T).
replay DIR *ARGS:
    python -m bench.replay {{DIR}} {{ARGS}}

# A py-spy profile of the relay under streaming load: bench/results/profile-<time>/ (flame graph, top frames).
profile *ARGS:
    python -m bench.profile {{ARGS}}

# CPU per stream with recording, metrics, parsing, dumps off one at a time, and the floor (one run).
# e.g. just costs --baseline main --variants on,default   (before/after of a change, one run)
costs *ARGS:
    python -m bench.costs {{ARGS}}
