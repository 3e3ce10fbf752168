#!/usr/bin/env bash
# Evaluates every AWS call `vending` made in the test suites against the roles of
# template.yaml (the function) and deploy/ecs/template.yaml (the task) with
# @cloud-copilot/iam-simulate (tests/iam/check.py, tests/iam/test_iam_policies.py).
# The suites record first (make test-rust test-contract test-scripts); tests/template/setup.sh
# installs the tools (.venv-tools, tests/iam/node_modules). Fails when nothing was recorded.
#
# Usage: tests/iam/run.sh [PYTEST_ARG...]
#
# Environment:
#   IAM_CALLS_DIR        where the suites recorded (default target/iam-calls)
#   IAM_REQUIRED_SUITES  the suites that must have recorded (default "rust contract scripts")
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="$root/.venv-tools/bin/python"

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    usage
    return 0
  fi
  if [[ ! -x "$python" || ! -d "$root/tests/iam/node_modules/@cloud-copilot/iam-simulate" ]]; then
    echo "tests/iam/run.sh: run tests/template/setup.sh first (.venv-tools, tests/iam/node_modules)" >&2
    return 1
  fi
  export IAM_CALLS_DIR="${IAM_CALLS_DIR:-$root/target/iam-calls}"
  cd "$root/tests/iam"
  "$python" -m pytest -p no:cacheprovider -q "$root/tests/iam/test_iam_policies.py" "$@"
}

main "$@"
