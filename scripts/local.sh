#!/usr/bin/env bash
# Runs activation vending locally against the AWS emulator.
#
# Usage:
#   scripts/local.sh up [--servers N]   start the emulator (if not running), provision it,
#                                       build target/release/vending if needed and start
#                                       N (default 1) `vending serve` processes; prints
#                                       VENDING_URL=, VENDING_URLS= and EMULATOR_URL= lines
#                                       (N=0: the emulator alone, EMULATOR_URL= only)
#   scripts/local.sh env                print the export lines another `vending serve` needs
#                                       to share the same emulator and table
#   scripts/local.sh down               stop everything `up` started
#   scripts/local.sh status             say what is running
#
# Environment:
#   LOCAL_EMULATOR_PORT  emulator port (default 24660; defaults sit below the kernel's
#                        ephemeral range so outgoing connections never take them)
#   LOCAL_VENDING_PORT   first server's port; server i listens on base+i-1 (default 24680)
#   LOCAL_STATE_DIR      pid files, env file and logs (default .local in the repository)
#   VENDING_BIN          the binary to run (default target/release/vending, built if needed)
#   VENDING_*            passed through to every `vending serve` (e.g. VENDING_REGISTRATION_LIMIT)
#   RUST_LOG             passed through
#
# Exit codes: 0 done, 1 usage, 2 the emulator did not start, 3 a server did not start,
#             4 `env` before `up`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMULATOR_PORT="${LOCAL_EMULATOR_PORT:-24660}"
VENDING_PORT="${LOCAL_VENDING_PORT:-24680}"
STATE_DIR="${LOCAL_STATE_DIR:-$ROOT/.local}"
LOG_DIR="$STATE_DIR/logs"
ENV_FILE="$STATE_DIR/env"
EMULATOR_URL="http://127.0.0.1:$EMULATOR_PORT"
PYTHON="${VENDING_VENV:-$ROOT/.venv}/bin/python"

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  local code="$1"; shift
  printf 'local.sh: %s\n' "$*" >&2
  exit "$code"
}

# Waits until URL answers 200, up to SECONDS; returns 1 on time-out.
wait_for() {
  local url="$1" seconds="$2" deadline
  deadline=$((SECONDS + seconds))
  until curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; do
    if ((SECONDS >= deadline)); then return 1; fi
    sleep 0.1
  done
}

# Sends TERM, then KILL after a grace period, to the process in a pid file.
stop_pidfile() {
  local pidfile="$1" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

start_emulator() {
  if curl -fsS -o /dev/null --max-time 1 "$EMULATOR_URL/_emulator/health" 2>/dev/null; then
    return 0
  fi
  "$ROOT/scripts/setup.sh"
  nohup "$PYTHON" "$ROOT/scripts/emulator/server.py" --port "$EMULATOR_PORT" \
    >"$LOG_DIR/emulator.log" 2>&1 &
  echo $! >"$STATE_DIR/emulator.pid"
  wait_for "$EMULATOR_URL/_emulator/health" 30 ||
    die 2 "the emulator did not answer on $EMULATOR_URL (see $LOG_DIR/emulator.log)"
}

provision() {
  "$PYTHON" "$ROOT/scripts/emulator/provision.py" --endpoint "$EMULATOR_URL" >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

vending_bin() {
  local bin="${VENDING_BIN:-$ROOT/target/release/vending}"
  if [[ -z "${VENDING_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin vending) >&2
  fi
  [[ -x "$bin" ]] || die 3 "no executable at $bin"
  printf '%s\n' "$bin"
}

# Starts server number $1 with the provisioned settings, the caller's VENDING_* winning.
start_server() {
  local index="$1" bin="$2" port
  port=$((VENDING_PORT + index - 1))
  (
    set -a
    # shellcheck source=/dev/null
    source "$ENV_FILE"
    set +a
    while IFS='=' read -r name value; do
      export "$name=$value"
    done < <(env | grep -E '^(VENDING_|RUST_LOG=)' | grep -v '^VENDING_BIN=' || true)
    exec "$bin" serve --listen "127.0.0.1:$port"
  ) >"$LOG_DIR/vending-$index.log" 2>&1 &
  echo $! >"$STATE_DIR/vending-$index.pid"
  wait_for "http://127.0.0.1:$port/health" 30 ||
    die 3 "vending serve $index did not answer on port $port (see $LOG_DIR/vending-$index.log)"
  printf 'http://127.0.0.1:%s\n' "$port"
}

stop_servers() {
  local pidfile
  for pidfile in "$STATE_DIR"/vending-*.pid; do
    [[ -e "$pidfile" ]] || continue
    stop_pidfile "$pidfile"
  done
}

cmd_up() {
  local servers=1
  while (($#)); do
    case "$1" in
      --servers) servers="${2:?--servers needs a number}"; shift 2 ;;
      --servers=*) servers="${1#*=}"; shift ;;
      *) usage >&2; exit 1 ;;
    esac
  done
  [[ "$servers" =~ ^(0|[1-9][0-9]*)$ ]] || die 1 "--servers must be a whole number"
  mkdir -p "$LOG_DIR"
  start_emulator
  provision
  if ((servers == 0)); then
    stop_servers
    printf 'EMULATOR_URL=%s\n' "$EMULATOR_URL"
    return 0
  fi
  local bin urls=() i
  bin="$(vending_bin)"
  stop_servers
  for ((i = 1; i <= servers; i++)); do
    urls+=("$(start_server "$i" "$bin")")
  done
  printf 'VENDING_URL=%s\n' "${urls[0]}"
  printf 'VENDING_URLS=%s\n' "$(IFS=,; echo "${urls[*]}")"
  printf 'EMULATOR_URL=%s\n' "$EMULATOR_URL"
}

cmd_env() {
  [[ -f "$ENV_FILE" ]] || die 4 "nothing is up: run 'scripts/local.sh up' first"
  cat "$ENV_FILE"
}

cmd_down() {
  stop_servers
  stop_pidfile "$STATE_DIR/emulator.pid"
  rm -f "$ENV_FILE"
}

cmd_status() {
  local pidfile
  for pidfile in "$STATE_DIR"/*.pid; do
    [[ -e "$pidfile" ]] || { echo "nothing is running"; return 0; }
    if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      printf '%s running (pid %s)\n' "$(basename "$pidfile" .pid)" "$(cat "$pidfile")"
    else
      printf '%s not running\n' "$(basename "$pidfile" .pid)"
    fi
  done
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    up) cmd_up "$@" ;;
    env) cmd_env ;;
    down) cmd_down ;;
    status) cmd_status ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 1 ;;
  esac
}

main "$@"
