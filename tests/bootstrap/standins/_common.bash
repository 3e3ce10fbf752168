# shellcheck shell=bash
# The variables below are read by the stand-ins that source this file:
# shellcheck disable=SC2034
# Shared by the stand-ins. They run under the sandboxed PATH of the script being
# tested, so they switch to the real PATH the test helper recorded.
# BOOTSTRAP_ROOT is the simulated server's filesystem root (one per server).
set -euo pipefail
: "${BOOTSTRAP_ROOT:?stand-ins need BOOTSTRAP_ROOT}"
: "${STANDIN_REAL_PATH:?stand-ins need STANDIN_REAL_PATH}"
# The server's own PATH (what a tool run by the script finds there, e.g. gpg or not).
SERVER_PATH=$PATH
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
		ln -sf "$STANDIN_DIR/ssm-cli" "$BOOTSTRAP_ROOT/usr/bin/ssm-cli"
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

# The agent's own paths on the simulated server.
AGENT_DATA="$BOOTSTRAP_ROOT/var/lib/amazon/ssm"
AGENT_VAULT="$AGENT_DATA/Vault"
AGENT_REGISTRATION="$AGENT_DATA/registration"
AGENT_LOG="$BOOTSTRAP_ROOT/var/log/amazon/ssm/amazon-ssm-agent.log"

# A line as the agent's seelog writes it (format fmtinfo in seelog_unix.xml:
# "%Date(2006-01-02 15:04:05.0000) %LEVEL %Msg") to its log file (the rollingfile
# /var/log/amazon/ssm/amazon-ssm-agent.log of seelog_unix.xml:10).
agent_log_line() { # LEVEL MESSAGE
	mkdir -p "$(dirname "$AGENT_LOG")"
	printf '%s %s %s\n' "$(date '+%F %T.0000')" "$1" "$2" >>"$AGENT_LOG"
}
# The same line on the console too (seelog_unix.xml:9, <console>): what -register prints.
agent_say() { # LEVEL MESSAGE
	agent_log_line "$1" "$2"
	printf '%s %s %s\n' "$(date '+%F %T.0000')" "$1" "$2"
}
# The agent's side of the protocol with SSM (register, checkin), spoken over HTTP to
# the emulator: ssm_agent_client.py, beside this file.
# The register step reads the code on standard input (never on a command line). With
# STANDIN_AGENT_SOCKET, the same step runs in the client's daemon (`serve`): the request
# is the input line then one argument per line; the answer, the exit status then the output.
agent_client() { # STEP [ARGS...]
	local -a args=("$1" --endpoint "${STANDIN_EMULATOR_URL:-http://127.0.0.1:9}" --vault "$AGENT_VAULT" "${@:2}")
	if [ -z "${STANDIN_AGENT_SOCKET:-}" ] || [ ! -S "$STANDIN_AGENT_SOCKET" ]; then
		python3 "$STANDIN_DIR/ssm_agent_client.py" "${args[@]}"
		return
	fi
	local input='' answer
	if [ "$1" = register ]; then IFS= read -r input || true; fi
	answer=$(printf '%s\n' "$input" "${args[@]}" |
		curl -sS --fail --unix-socket "$STANDIN_AGENT_SOCKET" --data-binary @- http://agent/run) || return 70
	if [[ "$answer" == *$'\n'* ]]; then printf '%s\n' "${answer#*$'\n'}"; fi
	return "${answer%%$'\n'*}"
}
# The instance ID in the agent's vault (Vault/Store/RegistrationKey, the JSON of
# instanceInfo: agent/managedInstances/registration/instance_info.go:31-40), or nothing:
# what registration.InstanceID reads (instance_info.go:59). Read in bash, no Python, so
# a boot storm of 200 servers stays cheap.
vault_instance_id() {
	sed -n 's/.*"instanceID"[[:space:]]*:[[:space:]]*"\(mi-[0-9a-f]*\)".*/\1/p' "$AGENT_VAULT/Store/RegistrationKey" 2>/dev/null || true
}
vault_region() {
	sed -n 's/.*"region"[[:space:]]*:[[:space:]]*"\([a-z0-9-]*\)".*/\1/p' "$AGENT_VAULT/Store/RegistrationKey" 2>/dev/null || true
}
