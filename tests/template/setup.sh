#!/usr/bin/env bash
# Creates .venv-tools at the repository root with the template gate tools
# (requirements/template-tools.txt): SAM CLI, cfn-lint, checkov, cargo-lambda
# (with zig), cfn-flip and pytest. Idempotent: when the venv already holds the
# exact requirements file it returns at once.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.venv-tools"
req="$root/requirements/template-tools.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "template tools: up to date in $venv"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" >"$stamp"
echo "template tools: installed into $venv"
