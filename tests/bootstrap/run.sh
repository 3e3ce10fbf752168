#!/usr/bin/env bash
# Runs the boot-script suites (called by `make test`):
#   lint.bats     shellcheck over every shell script under scripts/ and tests/
#   windows.bats  tree-sitter-powershell parse check of scripts/bootstrap-windows.ps1
#                 (and proof that the check fails on broken copies), review rules
#   linux.bats    scripts/bootstrap-linux.sh against the real service
#   storm.bats    the boot storm: 200 servers, 2 `vending serve`, registration limit 25
# It starts the emulator and 2 `vending serve` processes with scripts/local.sh on
# ports and a state directory of its own (so a running demo is left alone), stops
# them at the end, and closes with a plain "N passed, N failed" line.
#
# Usage: tests/bootstrap/run.sh [BATS_FILE...]     (default: all four suites)
# Environment:
#   BOOTSTRAP_TEST_EMULATOR_PORT  emulator port (default 28760; below the ephemeral range)
#   BOOTSTRAP_TEST_VENDING_PORT   first `vending serve` port (default 28780)
#   BOOTSTRAP_TEST_STATE_DIR      local.sh state and logs (default .local/bootstrap-tests)
#   BOOTSTRAP_STORM_SERVERS       simulated servers in the storm (default 200)
#   VENDING_BIN                   passed to local.sh (default: it builds target/release/vending)
# Exit status: 0 when every test passed, 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/bootstrap"
VENV="${VENDING_VENV:-$ROOT/.venv}"
cd "$ROOT"

# ------------------------------------------------------------------ tools

"$HERE/setup.sh"
export PATH="$VENV/bin:$PATH"
export BOOTSTRAP_TEST_PYTHON="$VENV/bin/python"

# ---------------------------------------------------------------- service

export LOCAL_EMULATOR_PORT="${BOOTSTRAP_TEST_EMULATOR_PORT:-28760}"
export LOCAL_VENDING_PORT="${BOOTSTRAP_TEST_VENDING_PORT:-28780}"
export LOCAL_STATE_DIR="${BOOTSTRAP_TEST_STATE_DIR:-$ROOT/.local/bootstrap-tests}"
mkdir -p "$LOCAL_STATE_DIR"

# local.sh passes every VENDING_* variable to the servers: keep the boot script's
# own inputs (a developer may have them exported) out of the service.
unset VENDING_URL VENDING_URLS VENDING_POOL VENDING_INSTANCE VENDING_REGION VENDING_API_ID \
	VENDING_CA_BUNDLE VENDING_MAX_WAIT VENDING_FORCE VENDING_DRY_RUN

service_started=0
agent_daemon=''
stop_service() {
	if [ -n "$agent_daemon" ]; then kill "$agent_daemon" 2>/dev/null || true; fi
	if [ "$service_started" = 1 ]; then
		"$ROOT/scripts/local.sh" down >/dev/null 2>&1 || true
	fi
}

# The stand-in agent's protocol client as one daemon (ssm_agent_client.py serve): the
# stand-ins reach it over STANDIN_AGENT_SOCKET instead of starting Python for each step.
start_agent_daemon() {
	export STANDIN_AGENT_SOCKET="$LOCAL_STATE_DIR/agent-client.sock"
	"$VENV/bin/python" "$HERE/standins/ssm_agent_client.py" serve "$STANDIN_AGENT_SOCKET" \
		>"$LOCAL_STATE_DIR/agent-client.log" 2>&1 &
	agent_daemon=$!
	local tries
	for ((tries = 0; tries < 100; tries++)); do
		[ -S "$STANDIN_AGENT_SOCKET" ] && return 0
		sleep 0.05
	done
	echo "the stand-in agent client did not start: $LOCAL_STATE_DIR/agent-client.log" >&2
	return 1
}
trap stop_service EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

suites=("$@")
if [ "${#suites[@]}" -eq 0 ]; then
	suites=("$HERE/lint.bats" "$HERE/windows.bats" "$HERE/linux.bats" "$HERE/storm.bats")
fi
needs_service=0
for suite in "${suites[@]}"; do
	case "$suite" in *linux.bats | *storm.bats) needs_service=1 ;; esac
done

extra_failed=0
if [ "$needs_service" = 1 ]; then
	echo "starting the emulator and 2 vending servers (registration limit 25) with scripts/local.sh"
	service_started=1
	up_out="$LOCAL_STATE_DIR/up.out"
	if VENDING_REGISTRATION_LIMIT=25 "$ROOT/scripts/local.sh" up --servers 2 >"$up_out" 2>&1; then
		BOOTSTRAP_TEST_VENDING_URL=$(sed -n 's/^VENDING_URL=//p' "$up_out")
		BOOTSTRAP_TEST_VENDING_URLS=$(sed -n 's/^VENDING_URLS=//p' "$up_out")
		BOOTSTRAP_TEST_EMULATOR_URL=$(sed -n 's/^EMULATOR_URL=//p' "$up_out")
		export BOOTSTRAP_TEST_VENDING_URL BOOTSTRAP_TEST_VENDING_URLS BOOTSTRAP_TEST_EMULATOR_URL
		start_agent_daemon
		echo "service: $BOOTSTRAP_TEST_VENDING_URLS; emulator: $BOOTSTRAP_TEST_EMULATOR_URL"
	else
		echo "scripts/local.sh up failed; the suites that need the service are not run:" >&2
		sed 's/^/    /' "$up_out" >&2
		for log in "$LOCAL_STATE_DIR"/logs/*.log; do
			[ -e "$log" ] || continue
			echo "--- $log (last lines)" >&2
			tail -n 20 "$log" >&2
		done
		extra_failed=1
		kept=()
		for suite in "${suites[@]}"; do
			case "$suite" in *linux.bats | *storm.bats) ;; *) kept+=("$suite") ;; esac
		done
		suites=(${kept[@]+"${kept[@]}"})
	fi
fi

# ------------------------------------------------------------------ suites

tap="$LOCAL_STATE_DIR/bootstrap-tests.tap"
bats_status=0
if [ "${#suites[@]}" -gt 0 ]; then
	bats --formatter tap "${suites[@]}" 2>&1 | tee "$tap" || bats_status=$?
else
	: >"$tap"
fi

# TAP summary: "ok N ..." (with "# skip" for skipped), "not ok N ...".
passed=$(grep -cE '^ok [0-9]+' "$tap" || true)
skipped=$(grep -cE '^ok [0-9]+ .*# skip' "$tap" || true)
failed=$(grep -cE '^not ok [0-9]+' "$tap" || true)
passed=$((passed - skipped))
failed=$((failed + extra_failed))
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
	echo "no test ran" >&2
	failed=1
fi
if [ "$failed" -eq 0 ] && [ "$bats_status" -ne 0 ]; then
	echo "bats exited with status $bats_status" >&2
	failed=1
fi

if [ "$skipped" -gt 0 ]; then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
