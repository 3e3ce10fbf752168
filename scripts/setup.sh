#!/usr/bin/env bash
# Installs what the local demo and the tests need into .venv (idempotent).
#
# Usage: scripts/setup.sh [--help]
# Exit codes: 0 ready, 1 an install step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENDING_VENV:-$ROOT/.venv}"

usage() {
  sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

requirement_files() {
  local f
  for f in "$ROOT/scripts/emulator/requirements.txt" "$ROOT"/requirements/test-*.txt; do
    if [[ -f "$f" ]]; then printf '%s\n' "$f"; fi
  done
}

# A stamp of the requirement files' contents: reinstall only when they change.
requirements_stamp() {
  requirement_files | xargs cat | sha256sum | cut -d' ' -f1
}

ensure_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
  fi
  local stamp
  stamp="$(requirements_stamp)"
  if [[ "$(cat "$VENV/.requirements-stamp" 2>/dev/null || true)" == "$stamp" ]]; then
    return 0
  fi
  local args=()
  local f
  while IFS= read -r f; do args+=(-r "$f"); done < <(requirement_files)
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${args[@]}"
  printf '%s\n' "$stamp" > "$VENV/.requirements-stamp"
}

main() {
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ensure_venv ;;
    *) usage >&2; exit 1 ;;
  esac
}

main "$@"
