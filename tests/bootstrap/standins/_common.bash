# shellcheck shell=bash
# Shared by the stand-ins. They run under the sandboxed PATH of the script being
# tested, so they switch to the real PATH the test helper recorded.
# BOOTSTRAP_ROOT is the simulated server's filesystem root (one per server).
set -euo pipefail
: "${BOOTSTRAP_ROOT:?stand-ins need BOOTSTRAP_ROOT}"
: "${STANDIN_REAL_PATH:?stand-ins need STANDIN_REAL_PATH}"
PATH=$STANDIN_REAL_PATH
STATE="$BOOTSTRAP_ROOT/.standin"
mkdir -p "$STATE"

# One line per call; callers mask secrets before logging.
standin_log() { printf '%s\n' "$*" >>"$STATE/calls.log"; }

# "Installs" a package into the simulated server's /usr/bin.
standin_install_package() {
	local what=$1
	mkdir -p "$BOOTSTRAP_ROOT/usr/bin"
	case "$what" in
	jq | curl)
		if [[ " ${STANDIN_PKG_FAIL:-} " == *" $what "* ]]; then
			echo "Error: Unable to find a match: $what" >&2
			return 1
		fi
		ln -sf "$(command -v "$what")" "$BOOTSTRAP_ROOT/usr/bin/$what"
		;;
	amazon-ssm-agent | *amazon-ssm-agent.rpm | *amazon-ssm-agent.deb)
		if [[ " ${STANDIN_PKG_FAIL:-} " == *" amazon-ssm-agent "* ]]; then
			echo "error: amazon-ssm-agent: install failed" >&2
			return 1
		fi
		ln -sf "$STANDIN_DIR/amazon-ssm-agent" "$BOOTSTRAP_ROOT/usr/bin/amazon-ssm-agent"
		mkdir -p "$BOOTSTRAP_ROOT/usr/lib/systemd/system"
		: >"$BOOTSTRAP_ROOT/usr/lib/systemd/system/amazon-ssm-agent.service"
		;;
	*)
		echo "No package $what available." >&2
		return 1
		;;
	esac
	standin_log "installed $what"
}
