#!/usr/bin/env bash
# Installs the Debian packages the tests need beyond Rust and Python: `faketime`
# (libfaketime), with which lambda/tests/integration/clock.rs runs the service
# with a shifted clock. Does nothing when they are installed already. Run as root
# (or with sudo available); .ci/run runs it in the background before the Rust
# tests.
set -euo pipefail

readonly PACKAGES=(faketime)

usage() {
  cat <<'USAGE'
Usage: scripts/install-test-packages.sh [--help]

Installs the Debian packages the tests need (faketime) with apt-get, after an
apt-get update, unless they are installed already.
USAGE
}

missing_packages() {
  local package
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || echo "$package"
  done
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

main() {
  if [[ $# -gt 0 ]]; then
    case $1 in
      -h | --help) usage; return 0 ;;
      *) usage >&2; return 2 ;;
    esac
  fi
  local -a missing
  mapfile -t missing < <(missing_packages)
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "test packages already installed: ${PACKAGES[*]}"
    return 0
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

main "$@"
