#!/usr/bin/env bash
# The local demo: brings the emulator and two `vending serve` processes up, boots a
# handful of simulated servers against them (each fetches an activation and registers
# with it the way the SSM agent would), shows a rotation and a retry, then tears down.
#
# Usage: scripts/demo.sh [--help]
# Environment: DEMO_SERVERS (default 7), DEMO_LIMIT (registration limit, default 3),
#              and everything scripts/local.sh reads.
# Exit codes: 0 the demo ran, 1 a step failed (the message says which).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVERS="${DEMO_SERVERS:-7}"
LIMIT="${DEMO_LIMIT:-3}"

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

say() {
  printf '\n\033[1m== %s\033[0m\n' "$*"
}

fail() {
  printf 'demo: %s\n' "$*" >&2
  exit 1
}

teardown() {
  say "Tearing down"
  "$ROOT/scripts/local.sh" down
}

# A simulated server's machine identity, as the boot scripts send it: the SHA-256
# digest of its machine ID (here, of its name: every simulated server is a machine).
machine_id() {
  printf 'demo-machine-%s' "$1" | sha256sum | cut -d' ' -f1
}

# One simulated server: fetch an activation, register like the SSM agent would.
# Prints a table row; the code is masked whole, as the boot scripts do.
boot_server() {
  local name="$1" url="$2" emulator="$3" body id code registered
  body="$(curl -fsS --retry 5 --retry-delay 1 -H "X-Machine-Id: $(machine_id "$name")" \
    "$url/activation?instance=$name")" ||
    fail "$name could not fetch an activation from $url"
  id="$(jq -r .ActivationId <<<"$body")"
  code="$(jq -r .ActivationCode <<<"$body")"
  registered="$(jq -n --arg id "$id" --arg code "$code" --arg name "$name" \
      '{ActivationId: $id, ActivationCode: $code, InstanceName: $name}' |
    curl -sS -X POST --data-binary @- "$emulator/_emulator/register")"
  printf '  %-10s via %-22s activation %s  code %s  -> %s\n' \
    "$name" "${url#http://}" "$id" "<masked, ${#code} chars>" "$(jq -r '.InstanceId // .error' <<<"$registered")"
}

main() {
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 1 ;;
  esac
  command -v jq >/dev/null || fail "jq is needed (apt-get install jq)"

  say "Starting the AWS emulator and two vending servers (registration limit $LIMIT)"
  local output urls emulator
  output="$(VENDING_REGISTRATION_LIMIT="$LIMIT" "$ROOT/scripts/local.sh" up --servers 2)"
  trap teardown EXIT
  printf '%s\n' "$output"
  urls="$(sed -n 's/^VENDING_URLS=//p' <<<"$output")"
  emulator="$(sed -n 's/^EMULATOR_URL=//p' <<<"$output")"
  IFS=, read -r -a servers <<<"$urls"

  say "GET /health"
  curl -fsS "${servers[0]}/health"
  echo

  say "Booting $SERVERS servers: each fetches an activation and registers with it"
  local i
  for ((i = 1; i <= SERVERS; i++)); do
    boot_server "web-$(printf '%02d' "$i")" "${servers[$(((i - 1) % ${#servers[@]}))]}" "$emulator"
  done
  echo "  With a limit of $LIMIT registrations per activation, the pool rotated as it filled:"
  echo "  every server got a code SSM accepted; none got RegistrationLimitExceeded."

  say "A server that retries (same name, same machine) gets the same activation back, without using a slot"
  curl -fsS -H "X-Machine-Id: $(machine_id web-01)" "${servers[1]}/activation?instance=web-01" |
    jq '{ActivationId, Pool, ExpirationDate, ActivationCode: "<masked>"}'

  say "Errors are JSON with the right status"
  curl -sS -w '  (HTTP %{http_code})\n' "${servers[0]}/activation?pool=nosuch"
  curl -sS -w '  (HTTP %{http_code})\n' "${servers[0]}/activation?instance=not%20a%20host"

  say "What the servers logged (no activation code anywhere)"
  grep -hE 'rotated|standby' "${LOCAL_STATE_DIR:-$ROOT/.local}"/logs/vending-*.log | sed 's/^/  /' | cut -c1-160

  say "AWS calls the emulator saw"
  curl -fsS "$emulator/_emulator/calls" | jq -r 'to_entries | sort_by(.key)[] | "  \(.key): \(.value)"'
}

main "$@"
