#!/usr/bin/env bash
# Creates .venv-tools at the repository root with the template gate tools
# (requirements/template-tools.txt): SAM CLI, cfn-lint, checkov, cargo-lambda
# (with zig), cfn-flip and pytest; and tests/iam/node_modules with the IAM policy
# evaluator (`npm ci`: the exact versions of tests/iam/package-lock.json). Idempotent:
# when the venv already holds the exact requirements file, and node_modules the exact
# lock file, each returns at once.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.venv-tools"
req="$root/requirements/template-tools.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

iam_dir="$root/tests/iam"

python_tools() {
  local want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "template tools: up to date in $venv"
    return 0
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
  echo "template tools: installed into $venv"
}

# @cloud-copilot/iam-simulate and iam-data (tests/iam/check.py); Node 20 or newer.
node_tools() {
  local lock="$iam_dir/package-lock.json" node_stamp="$iam_dir/node_modules/.package-lock.sha256" want
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup.sh: the IAM evaluation (tests/iam) needs node and npm (Node 20 or newer)" >&2
    return 1
  fi
  want="$(sha256sum "$lock" | cut -d' ' -f1)"
  if [[ -f "$node_stamp" && "$(cat "$node_stamp")" == "$want" ]]; then
    echo "IAM evaluator: up to date in $iam_dir/node_modules"
    return 0
  fi
  (cd "$iam_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$node_stamp"
  echo "IAM evaluator: installed into $iam_dir/node_modules"
}

python_tools
node_tools
