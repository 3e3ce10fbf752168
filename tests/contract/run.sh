#!/usr/bin/env bash
# Contract test of openapi.yaml against a real `vending serve`:
#   1. validates openapi.yaml with openapi-spec-validator;
#   2. starts the emulator (scripts/emulator/server.py), provisions it
#      (scripts/emulator/provision.py) and starts one `vending serve` with those
#      settings only (a small registration limit, so that the run crosses rotations);
#   3. runs schemathesis with every check and a bounded number of examples per
#      operation: no response may break the document, and no answer may be a 5xx
#      other than 503 (tests/contract/schemathesis.toml); the server's own log
#      must show no 5xx other than 503 either;
#   4. stops everything it started, whatever happens.
# It ends with a plain "contract: N passed, N failed" line (N operations).
#
# Usage: tests/contract/run.sh [--help]
# Environment:
#   VENDING_VENV                 virtualenv with the pinned tools (default .venv; scripts/setup.sh)
#   VENDING_BIN                  the binary under test (default target/debug/vending,
#                                built with `cargo build --bin vending` only when missing)
#   CONTRACT_EMULATOR_PORT       emulator port (default 29660; below the ephemeral range)
#   CONTRACT_VENDING_PORT        `vending serve` port (default 29680)
#   CONTRACT_MAX_EXAMPLES        schemathesis --max-examples, per operation (default 50)
#   CONTRACT_SEED                schemathesis --seed (default 20261127, so runs repeat;
#                                `random` lets schemathesis pick and print one)
#   CONTRACT_WORKERS             schemathesis --workers (default 2)
#   CONTRACT_REGISTRATION_LIMIT  the server's VENDING_REGISTRATION_LIMIT (default 5)
#   CONTRACT_STATE_DIR           logs and reports (default target/contract)
# Exit codes:
#   0  openapi.yaml is valid and schemathesis found nothing
#   1  schemathesis found a response that breaks the document or a 5xx other than
#      503 (its report shows the request, with a curl line to repeat it), or the
#      server logged one
#   2  bad usage
#   3  openapi.yaml is not a valid OpenAPI document
#   4  the emulator, its provisioning, the build or `vending serve` failed to start
#   10 a tool is missing from the virtualenv (run scripts/setup.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/contract"
VENV="${VENDING_VENV:-$ROOT/.venv}"
PYTHON="$VENV/bin/python"
VALIDATOR="$VENV/bin/openapi-spec-validator"
SCHEMATHESIS="$VENV/bin/schemathesis"
DOCUMENT="$ROOT/openapi.yaml"

EMULATOR_PORT="${CONTRACT_EMULATOR_PORT:-29660}"
VENDING_PORT="${CONTRACT_VENDING_PORT:-29680}"
MAX_EXAMPLES="${CONTRACT_MAX_EXAMPLES:-50}"
SEED="${CONTRACT_SEED:-20261127}"
WORKERS="${CONTRACT_WORKERS:-2}"
REGISTRATION_LIMIT="${CONTRACT_REGISTRATION_LIMIT:-5}"
STATE_DIR="${CONTRACT_STATE_DIR:-$ROOT/target/contract}"
EMULATOR_URL="http://127.0.0.1:$EMULATOR_PORT"
VENDING_URL="http://127.0.0.1:$VENDING_PORT"

usage() {
  sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

say() {
  printf 'contract: %s\n' "$*"
}

die() {
  local code="$1"
  shift
  printf 'contract: %s\n' "$*" >&2
  exit "$code"
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

for number in "$EMULATOR_PORT" "$VENDING_PORT" "$MAX_EXAMPLES" "$WORKERS" "$REGISTRATION_LIMIT"; do
  [[ "$number" =~ ^[1-9][0-9]*$ ]] || die 2 "\`$number\` is not a positive whole number (see --help)"
done
[[ "$SEED" == random || "$SEED" =~ ^[0-9]+$ ]] || die 2 "CONTRACT_SEED must be a number or \`random\`"

for tool in "$PYTHON" "$VALIDATOR" "$SCHEMATHESIS"; do
  [[ -x "$tool" ]] || die 10 "$tool not found; run scripts/setup.sh first"
done
command -v curl >/dev/null || die 10 "curl not found"

# ------------------------------------------------------------- processes

emulator_pid=""
vending_pid=""

stop() {
  local pid
  for pid in "$vending_pid" "$emulator_pid"; do
    [[ -n "$pid" ]] || continue
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  vending_pid=""
  emulator_pid=""
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls URL until it answers 200, for at most $2 seconds; fails early if process $3 died.
wait_for() {
  local url="$1" seconds="$2" pid="$3" tries
  for ((tries = 0; tries < seconds * 10; tries++)); do
    if curl -fsS --max-time 1 -o /dev/null "$url" 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Fails when something already listens on 127.0.0.1:$1 (a leftover emulator or server
# would otherwise answer in place of the ones this script starts).
require_free_port() {
  local code=0
  curl -s --max-time 2 -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null || code=$?
  [[ "$code" == 7 ]] || die 4 "port $1 is in use (set $2 to another port)"
}

show_log() {
  echo "--- $1 (last lines)" >&2
  tail -n 30 "$1" >&2 || true
}

rm -rf "$STATE_DIR"
mkdir -p "$STATE_DIR"

# ------------------------------------------------------------- 1. the document

say "validating $(basename "$DOCUMENT") ($("$VALIDATOR" --version 2>/dev/null || echo openapi-spec-validator))"
if ! "$VALIDATOR" "$DOCUMENT"; then
  die 3 "$DOCUMENT is not a valid OpenAPI document"
fi

# ------------------------------------------------------------- 2. the service

BIN="${VENDING_BIN:-$ROOT/target/debug/vending}"
if [[ -z "${VENDING_BIN:-}" && ! -x "$BIN" ]]; then
  say "building target/debug/vending"
  (cd "$ROOT" && cargo build --quiet --bin vending) || die 4 "cargo build --bin vending failed"
fi
[[ -x "$BIN" ]] || die 4 "no executable at $BIN"

require_free_port "$EMULATOR_PORT" CONTRACT_EMULATOR_PORT
require_free_port "$VENDING_PORT" CONTRACT_VENDING_PORT

say "starting the emulator on $EMULATOR_URL"
"$PYTHON" "$ROOT/scripts/emulator/server.py" --port "$EMULATOR_PORT" >"$STATE_DIR/emulator.log" 2>&1 &
emulator_pid=$!
if ! wait_for "$EMULATOR_URL/_emulator/health" 30 "$emulator_pid"; then
  show_log "$STATE_DIR/emulator.log"
  die 4 "the emulator did not answer on $EMULATOR_URL (port in use?)"
fi

if ! "$PYTHON" "$ROOT/scripts/emulator/provision.py" --endpoint "$EMULATOR_URL" >"$STATE_DIR/provision.env" 2>"$STATE_DIR/provision.log"; then
  show_log "$STATE_DIR/provision.log"
  die 4 "provisioning the emulator failed"
fi

# The server sees the provisioned settings and nothing else of this shell's
# environment: a developer's own VENDING_* or AWS_ENDPOINT_URL_* must not leak in.
settings=()
while IFS= read -r line; do
  [[ "$line" =~ ^export\ ([A-Z_][A-Z0-9_]*)=(.*)$ ]] || die 4 "unexpected provisioning output: $line"
  settings+=("${BASH_REMATCH[1]}=${BASH_REMATCH[2]}")
done <"$STATE_DIR/provision.env"
settings+=(
  "PATH=$PATH"
  "RUST_LOG=info"
  "VENDING_REGISTRATION_LIMIT=$REGISTRATION_LIMIT"
)

say "starting $BIN serve on $VENDING_URL (registration limit $REGISTRATION_LIMIT)"
env -i "${settings[@]}" "$BIN" serve --listen "127.0.0.1:$VENDING_PORT" >"$STATE_DIR/vending.log" 2>&1 &
vending_pid=$!
if ! wait_for "$VENDING_URL/health" 30 "$vending_pid"; then
  show_log "$STATE_DIR/vending.log"
  die 4 "vending serve did not answer on $VENDING_URL (port in use?)"
fi

# ------------------------------------------------------------- 3. schemathesis

seed_args=()
if [[ "$SEED" != random ]]; then
  seed_args=(--seed "$SEED")
fi
say "schemathesis $("$SCHEMATHESIS" --version | awk '{print $NF}'): every check, at most $MAX_EXAMPLES examples per operation"
status=0
# Run from the state directory: schemathesis and hypothesis keep caches in the
# working directory.
(
  cd "$STATE_DIR"
  SCHEMATHESIS_HOOKS="$HERE/hooks.py" "$SCHEMATHESIS" \
    --config-file "$HERE/schemathesis.toml" \
    run "$DOCUMENT" \
    --url "$VENDING_URL" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    "${seed_args[@]}" \
    --workers "$WORKERS" \
    --request-timeout 30 \
    --generation-database none \
    --report junit --report-junit-path "$STATE_DIR/junit.xml" \
    --no-color
) | tee "$STATE_DIR/schemathesis.out" || status=$?

# A second opinion from the server itself: error.rs logs every 5xx it answers.
server_errors=$(grep -E 'request failed' "$STATE_DIR/vending.log" | grep -Ev 'status=503' || true)
retry_laters=$(grep -cE 'request failed.*status=503' "$STATE_DIR/vending.log" || true)
vends=$(grep -c ' vended ' "$STATE_DIR/vending.log" || true)
rotations=$(grep -c ' rotated ' "$STATE_DIR/vending.log" || true)
say "the server vended $vends times across $rotations rotations and answered 503 $retry_laters times"
if [[ -n "$server_errors" ]]; then
  echo "contract: the server answered a 5xx other than 503:" >&2
  printf '%s\n' "$server_errors" | head -n 20 >&2
  status=1
fi

stop

# One plain closing line, counted per operation from schemathesis's JUnit report.
junit="$STATE_DIR/junit.xml"
if [[ -f "$junit" ]]; then
  read -r operations failed < <("$PYTHON" - "$junit" <<'PY'
import sys
import xml.etree.ElementTree as ET

cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
total = failed = 0
for case in cases:
    total += 1
    if case.find("failure") is not None or case.find("error") is not None:
        failed += 1
print(total, failed)
PY
  )
  if ((status != 0 && failed == 0)); then
    failed=1
  fi
  echo "contract: $((operations - failed)) passed, $failed failed"
else
  echo "contract: 0 passed, 1 failed (schemathesis wrote no report)"
  ((status != 0)) || status=1
fi

if ((status != 0)); then
  say "FAILED; logs and the report are in ${STATE_DIR#"$ROOT"/}"
  exit 1
fi
say "openapi.yaml holds for every generated request"
