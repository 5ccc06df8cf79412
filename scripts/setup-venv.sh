#!/bin/sh
# Set up the project's virtual environment for `make study` and `make test` (README, Quick start).
#
# Run from anywhere (it works in the folder above scripts/). It
# - creates .venv with Python 3.11 when there is none;
# - refuses a broken .venv (its python does not start, is not 3.11, or its scripts point into
#   another folder because it was moved or copied) with the command that fixes it;
# - runs `pip install -e ".[test]"` only when pyproject.toml changed since the last install that
#   succeeded: .venv/.installed-pyproject holds the sha256 of the pyproject.toml it installed,
#   written only after pip succeeded, so a failed install is retried by the next run.
# On an up-to-date .venv it costs one Python start-up and a hash compare.
#
# Environment:
#   SOFTMOE_PYTHON  the Python 3.11 that creates .venv (default: python3.11, else python3 when it is 3.11)
#   SOFTMOE_PIP     the pip command (default: .venv/bin/python -m pip); tests/test_make.py sets a recorder
set -eu
cd "$(dirname "$0")/.."

venv=.venv
stamp=$venv/.installed-pyproject
pip=${SOFTMOE_PIP:-$venv/bin/python -m pip}

say() { printf 'setup: %s\n' "$*" >&2; }

is_311() {
    "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1
}

find_python() {
    if [ -n "${SOFTMOE_PYTHON:-}" ]; then
        if is_311 "$SOFTMOE_PYTHON"; then echo "$SOFTMOE_PYTHON"; return 0; fi
        say "SOFTMOE_PYTHON=$SOFTMOE_PYTHON is not a working Python 3.11."
        return 1
    fi
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && is_311 "$candidate"; then
            echo "$candidate"; return 0
        fi
    done
    say "no Python 3.11 found (looked for python3.11 and python3 on PATH); this project needs 3.11."
    say "Install it (Debian/Ubuntu: apt install python3.11 python3.11-venv; macOS: brew install python@3.11;"
    say "any system: pyenv install 3.11), or name one: make test SOFTMOE_PYTHON=/path/to/python3.11"
    return 1
}

# Checks .venv and prints pyproject.toml's sha256; exits non-zero with the reason when .venv is broken.
check='
import hashlib, os, sys
if sys.version_info[:2] != (3, 11):
    sys.exit("it runs Python %d.%d, this project needs 3.11" % sys.version_info[:2])
bin_dir = os.path.dirname(sys.executable)
for name in ("pip", "snakemake", "pytest"):
    try:
        with open(os.path.join(bin_dir, name), "rb") as f:
            first = f.readline()
    except OSError:
        continue
    target = first[2:].strip().decode(errors="replace")
    if first.startswith(b"#!") and os.path.basename(target).startswith("python"):
        home = os.path.dirname(target)
        if not (os.path.isdir(home) and os.path.samefile(home, bin_dir)):
            sys.exit("its scripts run " + target + " (it was moved or copied from another folder)")
with open("pyproject.toml", "rb") as f:
    print(hashlib.sha256(f.read()).hexdigest())
'

if [ ! -e "$venv" ] && [ ! -L "$venv" ]; then
    python=$(find_python) || exit 1
    say "creating .venv with $python ($(command -v "$python"))"
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        say "could not create .venv with $python. On Debian/Ubuntu the venv module is a package of its own:"
        say "apt install python3.11-venv, then rerun the same make command."
        exit 1
    fi
fi

broken() {
    say ".venv is broken: $1"
    say "remove it, then rerun the same make command, which rebuilds it:  rm -rf .venv"
    exit 1
}
[ -x "$venv/bin/python" ] || broken "$venv/bin/python is missing or points to a Python that is gone"
sha=$("$venv/bin/python" -c "$check" 2>&1) || broken "$(printf '%s\n' "$sha" | tail -n 1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then
    exit 0
fi

say "installing the pinned dependencies (pyproject.toml is new or changed since the last install): pip install -e \".[test]\""
if [ -z "${SOFTMOE_PIP:-}" ] && ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    broken "it has no pip"
fi
rm -f "$stamp"
status=0
PIP_DISABLE_PIP_VERSION_CHECK=1 $pip install -e ".[test]" || status=$?
if [ "$status" -ne 0 ]; then
    say "pip install -e \".[test]\" failed (exit $status). Most often the package index could not be reached:"
    say "check the network (or the proxy / index in \`pip config list\`), then rerun the same make command;"
    say "nothing was marked installed, so it retries the install. If pip found no matching version, the pin in"
    say "pyproject.toml has no build for this platform."
    exit 1
fi
printf '%s\n' "$sha" > "$stamp.tmp"
mv "$stamp.tmp" "$stamp"
say "installed; the next run skips the install until pyproject.toml changes."
