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

# Lint, type-check, then run the whole test suite.
test *ARGS: lint
    python -m pytest -q {{ARGS}}

lint:
    ruff check relay bench tests
    ruff format --check relay bench tests
    mypy

fmt:
    ruff format relay bench tests
    ruff check --fix relay bench tests

# Regenerate docs/configuration.md and schemas/json from the code.
generate:
    python -m relay.options --markdown > docs/configuration.md
