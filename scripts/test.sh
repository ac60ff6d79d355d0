#!/usr/bin/env bash
# Run Bastion's test suite from a clean clone: the README's one test command.
#
# Why a script: CI and developers must run the same thing. It creates (or
# reuses) a virtualenv in .venv, installs the package with its test extras,
# and runs pytest. It reinstalls only when pyproject.toml or the interpreter
# changed, so a second run starts the tests within seconds.
#
# Environment:
#   PYTHON   interpreter used to create .venv (default: python3.11, else python3)
# Extra arguments are passed to pytest after the test folder.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP="$VENV/.bastion-install-stamp"

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif command -v python3.11 >/dev/null 2>&1; then
        echo python3.11
    else
        echo python3
    fi
}

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    py="$(pick_python)"
    if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
        echo "scripts/test.sh: $py is older than Python 3.11" >&2
        exit 1
    fi
    rm -rf "$VENV"
    echo "scripts/test.sh: creating $VENV with $("$py" --version 2>&1)"
    "$py" -m venv "$VENV"
fi

# What the installed environment depends on: the dependency list and the interpreter.
want="$( { sha256sum pyproject.toml; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" != "$want" ]] \
    || ! "$VENV/bin/python" -c 'import bastion_kernel, pytest' >/dev/null 2>&1; then
    echo "scripts/test.sh: installing bastion-kernel[test] into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[test]'
    echo "$want" > "$STAMP"
fi

rc=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "scripts/test.sh: pytest collected no tests; treating that as a failure" >&2
fi
exit "$rc"
