#!/usr/bin/env bash
# Benchmarks activation vending: builds the release `vending` binary and the Rust load
# generator (bench/), starts a fresh emulator and N `vending serve` processes through
# scripts/local.sh on ports of its own, runs the scenario(s), writes
# target/bench/summary.json and target/bench/summary.txt (a readable table), and stops
# everything it started.
#
# Usage: scripts/bench.sh [options] [-- vending-bench options]
#   --scenario S   steady (default) | storm-with-rotation | throttled | all | lambda-storm
#                  (lambda-storm: booting servers through a Lambda-shaped stage with
#                  AWS's quotas on, 1,000 at 20 rps then 10,000 at 1,000 rps; writes
#                  target/bench/lambda-storm.json; not part of `all`; its own flags,
#                  e.g. --storm-servers, --storm-runs, go after `--`)
#   --servers N    vending serve processes                   (default 2)
#   --clients N    concurrent clients                         (default 64)
#   --vends N      vends in the main phase                    (default 5000)
#   --limit N      registration limit (default 100; storm-with-rotation: 10)
#   -h, --help     this text
#   After `--`, options go to vending-bench as they are (see `vending-bench --help`).
#
# Environment (flags win): BENCH_SCENARIO, BENCH_SERVERS, BENCH_CLIENTS, BENCH_VENDS,
#   BENCH_LIMIT; BENCH_EMULATOR_PORT (default 27660), BENCH_VENDING_PORT (default 27680),
#   BENCH_STATE_DIR (default target/bench/local); other VENDING_* and RUST_LOG reach
#   the servers as scripts/local.sh passes them.
#
# Numbers are reported against the issue's targets, not enforced.
# Exit codes: 0 done, 1 the run failed, 2 bad usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  printf 'bench.sh: %s\n' "$2" >&2
  exit "$1"
}

scenario="${BENCH_SCENARIO:-steady}"
servers="${BENCH_SERVERS:-2}"
clients="${BENCH_CLIENTS:-64}"
vends="${BENCH_VENDS:-5000}"
limit="${BENCH_LIMIT:-}"
extra=()

while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --scenario|--servers|--clients|--vends|--limit)
      (($# >= 2)) || die 2 "$1 needs a value"
      case "$1" in
        --scenario) scenario="$2" ;;
        --servers) servers="$2" ;;
        --clients) clients="$2" ;;
        --vends) vends="$2" ;;
        --limit) limit="$2" ;;
      esac
      shift 2 ;;
    --scenario=*) scenario="${1#*=}"; shift ;;
    --servers=*) servers="${1#*=}"; shift ;;
    --clients=*) clients="${1#*=}"; shift ;;
    --vends=*) vends="${1#*=}"; shift ;;
    --limit=*) limit="${1#*=}"; shift ;;
    --) shift; extra=("$@"); break ;;
    *) usage >&2; die 2 "unknown argument: $1" ;;
  esac
done

case "$scenario" in
  steady|storm-with-rotation|throttled|all|lambda-storm) ;;
  *) die 2 "--scenario must be steady, storm-with-rotation, throttled, all or lambda-storm (got '$scenario')" ;;
esac
for pair in "servers:$servers" "clients:$clients" "vends:$vends" ${limit:+"limit:$limit"}; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die 2 "--${pair%%:*} must be a positive whole number"
done

# Ports and state of the bench's own, so it never touches another `local.sh up`.
export LOCAL_EMULATOR_PORT="${BENCH_EMULATOR_PORT:-27660}"
export LOCAL_VENDING_PORT="${BENCH_VENDING_PORT:-27680}"
export LOCAL_STATE_DIR="${BENCH_STATE_DIR:-$ROOT/target/bench/local}"
export VENDING_BIN="$ROOT/target/release/vending"

cd "$ROOT"
echo "bench.sh: building target/release/vending and the load generator" >&2
cargo build --release --quiet --bin vending
# A separate build, so the load generator's features never change the service binary.
cargo build --release --quiet -p vending-bench

mkdir -p "$LOCAL_STATE_DIR"
bench_pid=
cleanup() {
  "$ROOT/scripts/local.sh" down >/dev/null 2>&1 || true
}
# On INT/TERM: stop the load generator (it kills what it started itself), then
# the EXIT trap stops the emulator and the servers.
on_signal() {
  if [[ -n "$bench_pid" ]]; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  exit 130
}
trap cleanup EXIT
trap on_signal INT TERM

read -r load1 _ </proc/loadavg
if awk -v l="$load1" -v c="$(nproc)" 'BEGIN { exit !(l > c) }'; then
  printf 'bench.sh: note: 1-minute load average is %s on %s cores; figures will be noisy\n' \
    "$load1" "$(nproc)" >&2
fi

args=(--root "$ROOT" --scenario "$scenario" --servers "$servers" --clients "$clients" --vends "$vends")
if [[ -n "$limit" ]]; then args+=(--limit "$limit"); fi
# In the background, so that a signal reaches on_signal while we wait.
"$ROOT/target/release/vending-bench" "${args[@]}" "${extra[@]}" &
bench_pid=$!
wait "$bench_pid" # its exit status is the script's (set -e)
