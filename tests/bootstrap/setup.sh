#!/usr/bin/env bash
# Makes sure the boot-script suites can run: the test tools pinned in
# requirements/test-scripts.txt in .venv (through scripts/setup.sh, which installs
# every requirements file), and jq, curl, python3, gpg (it signs the test mirror and
# the script verifies with it) and sha256sum on the machine.
#
# Usage: tests/bootstrap/setup.sh
# Exit status: 0 ready, 1 something is missing and could not be installed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="${VENDING_VENV:-$ROOT/.venv}"

have_tools() {
	[ -x "$VENV/bin/bats" ] && [ -x "$VENV/bin/shellcheck" ] &&
		"$VENV/bin/python" -c 'import tree_sitter, tree_sitter_powershell, boto3' 2>/dev/null
}

if ! have_tools; then
	"$ROOT/scripts/setup.sh"
fi
have_tools || {
	echo "tests/bootstrap/setup.sh: bats, shellcheck or tree-sitter-powershell missing from $VENV" >&2
	exit 1
}

missing=()
for tool in jq curl python3 timeout flock gpg sha256sum od; do
	command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		packages=()
		for tool in "${missing[@]}"; do
			case "$tool" in
			timeout | sha256sum | od) packages+=(coreutils) ;;
			gpg) packages+=(gnupg) ;;
			flock) packages+=(util-linux) ;;
			*) packages+=("$tool") ;;
			esac
		done
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >/dev/null
	else
		echo "tests/bootstrap/setup.sh: missing ${missing[*]}; install them" >&2
		exit 1
	fi
fi
