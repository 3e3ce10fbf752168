#!/usr/bin/env bash
# Runs the emulator's own tests (tests/emulator/test_emulator.py, pytest): faults before
# and after the call is applied, dropped connections, DynamoDB's error shapes, latency,
# TransactWriteItems token idempotency and ALL_OLD on failed conditions, managed nodes
# (DescribeInstanceInformation, their tags, DeregisterManagedInstance, aging) and
# GetParametersByPath's validation and pages; AWS's request quotas as token buckets
# (test_quotas.py: their own emulator, EMULATOR_QUOTAS=aws-defaults); the table of
# moto's patches (test_patches.py, in-process). The tests start
# their own emulator (scripts/emulator/server.py) on a free port and stop it at the end.
#
# Usage: tests/emulator/run.sh [PYTEST_ARG...]     (e.g. -k latency, -x, -q)
# Environment:
#   VENDING_VENV        the virtualenv to use (default .venv; scripts/setup.sh makes it)
#   EMULATOR_TEST_PORT  port for the emulator under test (default: a free one)
# Exit status: pytest's: 0 every test passed, 1 a test failed, 2 interrupted,
#   3 internal error, 4 usage error, 5 no test collected; 10 when the virtualenv's
#   python is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="${VENDING_VENV:-$ROOT/.venv}"
PYTHON="$VENV/bin/python"

if [[ ! -x "$PYTHON" ]]; then
  echo "tests/emulator/run.sh: $PYTHON not found; run scripts/setup.sh first" >&2
  exit 10
fi

# No __pycache__ or .pytest_cache left in the work tree.
export PYTHONDONTWRITEBYTECODE=1
cd "$ROOT"
exec "$PYTHON" -m pytest -p no:cacheprovider "$ROOT/tests/emulator" "$@"
