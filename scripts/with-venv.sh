#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in ./.venv, then run the
# given command inside it from the repository root.
#
#   bash scripts/with-venv.sh python -m examples.compare_digits
#   bash scripts/with-venv.sh python -m pytest -q
#
# The environment is reinstalled only when pyproject.toml or this script change
# (a hash of both is kept in .venv/.lyapunov-plugin-stamp).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.lyapunov-plugin-stamp"

if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
    python=python3.11
else
    python=python3
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "[with-venv] creating $venv with $("$python" --version 2>&1)" >&2
    "$python" -m venv "$venv"
fi

want="$(cat "$root/pyproject.toml" "$root/scripts/with-venv.sh" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "[with-venv] installing lyapunov-plugin[dev] (editable) into $venv" >&2
    # pip's notes about unreachable local index folders are noise here; real errors still show.
    {
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[dev]"
    } 2> >(grep -v -e "is ignored: it is neither a file nor a directory" >&2)
    echo "$want" >"$stamp"
fi

cd "$root"
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
export MPLBACKEND="${MPLBACKEND:-Agg}"
exec "$@"
