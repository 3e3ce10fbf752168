# shellcheck shell=bash
# Variables set here are read by the suites that load this file:
# shellcheck disable=SC2034
# Shared by the bats suites in tests/bootstrap/.
#
# Each simulated server is a directory used as BOOTSTRAP_ROOT (its /etc/os-release,
# /usr/bin, /var/lib/amazon/ssm, /run) and runs scripts/bootstrap-linux.sh with a
# PATH made of, in order:
#   tests/bootstrap/standins/bin   systemctl, dnf, yum, apt-get, zypper
#   $ROOT/usr/bin                  what the stand-ins "installed": the amazon-ssm-agent
#                                  stand-in (put there by the ssm-setup-cli stand-in
#                                  or a package manager), curl
#   a toolbox                  symlinks to this machine's bash, curl, coreutils, gpg...
#                              never jq (the script must not need it); tools can be
#                              left out (make_toolbox DIR curl gpg)
# ssm-setup-cli is downloaded by the script itself from a file:// mirror laid out
# like the regional bucket, each file with a detached .sig made with a throwaway
# key that stands for AWS's SSM Agent key (VENDING_SIGNING_KEY points at it). The
# service is the real one, started by run.sh with scripts/local.sh; the stand-in
# agent registers through the emulator. Each server has its own /etc/machine-id.

REPO_ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
BOOTSTRAP_LINUX="$REPO_ROOT/scripts/bootstrap-linux.sh"
BOOTSTRAP_WINDOWS="$REPO_ROOT/scripts/bootstrap-windows.ps1"
STANDINS="$BATS_TEST_DIRNAME/standins"        # all stand-ins
STANDINS_BIN="$STANDINS/bin"                   # the ones on PATH from the start
TEST_PYTHON=${BOOTSTRAP_TEST_PYTHON:-$REPO_ROOT/.venv/bin/python}
[ -x "$TEST_PYTHON" ] || TEST_PYTHON=$(command -v python3)

# Tools the script (and `env bash`) may find on a bare server.
TOOLBOX_TOOLS=(bash sh env cat date uname id mktemp rm chmod sleep head tail tr wc timeout flock curl
	readlink dirname basename mkdir ln ls grep sed sha256sum gpg)

make_toolbox() { # DIR [TOOL_TO_LEAVE_OUT...]
	local dir=$1 tool path
	shift
	mkdir -p "$dir"
	for tool in "${TOOLBOX_TOOLS[@]}"; do
		[[ " $* " != *" $tool "* ]] || continue
		path=$(command -v "$tool") || continue
		ln -sf "$path" "$dir/$tool"
	done
}

# A throwaway OpenPGP key standing in for AWS's SSM Agent signing key: the private
# half signs the mirror, DIR/signing-key.asc is what the script trusts.
make_signing_key() { # DIR
	local dir=$1
	mkdir -p "$dir/gnupg"
	chmod 700 "$dir/gnupg"
	gpg --homedir "$dir/gnupg" --batch --quiet --passphrase '' \
		--quick-gen-key 'SSM Agent stand-in <ssm-agent-signer@example.invalid>' ed25519 sign never 2>/dev/null
	gpg --homedir "$dir/gnupg" --batch --armor --export >"$dir/signing-key.asc"
	SIGNING_HOME="$dir/gnupg"
	SIGNING_KEY_FILE="$dir/signing-key.asc"
	export SIGNING_HOME SIGNING_KEY_FILE
}

sign_file() { # FILE: FILE.sig, a detached signature as AWS publishes beside each download
	rm -f "$1.sig"
	gpg --homedir "${SIGNING_HOME:?make_signing_key first}" --batch --quiet --detach-sign -o "$1.sig" "$1"
}

# A file:// mirror of https://amazon-ssm-REGION.s3.REGION.amazonaws.com/latest/...
make_mirror() { # DIR
	local dir=$1 platform arch sub file
	for platform in linux debian; do
		for arch in amd64 arm64; do
			sub="$dir/latest/${platform}_$arch"
			mkdir -p "$sub"
			# shellcheck disable=SC2016 # $STANDIN_DIR and $@ belong in the generated script
			printf '#!/usr/bin/env bash\nexport STANDIN_BUCKET_DIR=%s\nexec "$STANDIN_DIR/ssm-setup-cli" "$@"\n' \
				"${platform}_$arch" >"$sub/ssm-setup-cli"
			printf 'stand-in package %s\n' "${platform}_$arch" >"$sub/amazon-ssm-agent.rpm"
			printf 'stand-in package %s\n' "${platform}_$arch" >"$sub/amazon-ssm-agent.deb"
			for file in "$sub/ssm-setup-cli" "$sub/amazon-ssm-agent.rpm" "$sub/amazon-ssm-agent.deb"; do
				sign_file "$file"
			done
		done
	done
}

os_release() { # DISTRO -> /etc/os-release text
	case "$1" in
	amzn2023) printf 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nID_LIKE="fedora"\nPRETTY_NAME="Amazon Linux 2023"\n' ;;
	amzn2) printf 'NAME="Amazon Linux"\nVERSION="2"\nID="amzn"\nID_LIKE="centos rhel fedora"\nPRETTY_NAME="Amazon Linux 2"\n' ;;
	rhel9) printf 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\nPRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n' ;;
	centos7) printf 'NAME="CentOS Linux"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"\nPRETTY_NAME="CentOS Linux 7 (Core)"\n' ;;
	fedora) printf 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40 (Server Edition)"\n' ;;
	rocky9) printf 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\nPRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n' ;;
	alma9) printf 'NAME="AlmaLinux"\nID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\nPRETTY_NAME="AlmaLinux 9.4 (Seafoam Ocelot)"\n' ;;
	debian12) printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n' ;;
	ubuntu2204) printf 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\n' ;;
	sles15) printf 'NAME="SLES"\nVERSION_ID="15.5"\nID="sles"\nID_LIKE="suse"\nPRETTY_NAME="SUSE Linux Enterprise Server 15 SP5"\n' ;;
	opensuse) printf 'NAME="openSUSE Leap"\nVERSION_ID="15.5"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\nPRETTY_NAME="openSUSE Leap 15.5"\n' ;;
	alpine) printf 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\nPRETTY_NAME="Alpine Linux v3.20"\n' ;;
	*) return 1 ;;
	esac
}

# Creates a simulated server with a machine id of its own; sets SERVER_ROOT.
new_server() { # DIR [DISTRO]
	SERVER_ROOT=$1
	mkdir -p "$SERVER_ROOT"/{etc,usr/bin,var/lib,var/log,run,tmp}
	os_release "${2:-rocky9}" >"$SERVER_ROOT/etc/os-release"
	new_machine_id "$SERVER_ROOT"
}

new_machine_id() { # ROOT: a fresh /etc/machine-id, as systemd writes it on first boot
	od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$1/etc/machine-id"
	printf '\n' >>"$1/etc/machine-id"
}

sha256_of() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# What the script must send as X-Machine-Id for the server at ROOT.
machine_digest() { # ROOT
	local v
	v=$(tr -d '[:space:]' <"$1/etc/machine-id")
	sha256_of "$v"
}

# Where the service and emulator are (exported by run.sh).
require_service() {
	if [ -z "${BOOTSTRAP_TEST_VENDING_URL:-}" ] || [ -z "${BOOTSTRAP_TEST_EMULATOR_URL:-}" ]; then
		echo "BOOTSTRAP_TEST_VENDING_URL / BOOTSTRAP_TEST_EMULATOR_URL are not set: run tests/bootstrap/run.sh" >&2
		return 1
	fi
}

# Runs bootstrap-linux.sh on the server at SERVER_ROOT with a clean environment.
# Extra environment: the array EXTRA_ENV (NAME=value ...). Toolbox: TOOLBOX.
# STANDIN_BIN replaces the stand-in directory on PATH (e.g. one with yum but no dnf).
bootstrap_env() {
	local -a envs=(
		"PATH=${STANDIN_BIN:-$STANDINS_BIN}:$SERVER_ROOT/usr/bin:${TOOLBOX:?}"
		"HOME=$SERVER_ROOT/tmp"
		"LANG=C"
		"BOOTSTRAP_ROOT=$SERVER_ROOT"
		"BOOTSTRAP_DOWNLOAD_BASE=file://${MIRROR:?}"
		"STANDIN_DIR=$STANDINS"
		"STANDIN_REAL_PATH=$PATH"
		"STANDIN_EMULATOR_URL=${BOOTSTRAP_TEST_EMULATOR_URL:-http://127.0.0.1:9}"
		"STANDIN_AGENT_SOCKET=${STANDIN_AGENT_SOCKET:-}"
	)
	if [ -n "${SIGNING_KEY_FILE:-}" ] && [ "${USE_SIGNING_KEY:-1}" = 1 ]; then envs+=("VENDING_SIGNING_KEY=$SIGNING_KEY_FILE"); fi
	printf '%s\n' "${envs[@]}" ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}
}

bootstrap() {
	local -a envs
	mapfile -t envs < <(bootstrap_env)
	timeout 300 env -i "${envs[@]}" "$BOOTSTRAP_LINUX" "$@"
}

# Same, piped into bash as the README's one-liner does (curl ... | bash -s -- ...).
bootstrap_piped() {
	local -a envs
	mapfile -t envs < <(bootstrap_env)
	cat "$BOOTSTRAP_LINUX" | timeout 300 env -i "${envs[@]}" "$(command -v bash)" -s -- "$@"
}

# Same, under `bash -x`.
bootstrap_traced() {
	local -a envs
	mapfile -t envs < <(bootstrap_env)
	timeout 300 env -i "${envs[@]}" "$(command -v bash)" -x "$BOOTSTRAP_LINUX" "$@"
}

# --------------------------------------------------------------- assertions

fail() {
	printf '%s\n' "$@" >&2
	return 1
}

# shellcheck disable=SC2154 # status and output are set by bats' run
show_run() {
	printf 'exit status: %s\n--- output ---\n%s\n--------------\n' "$status" "$output" >&2
	if [ -n "${SERVER_ROOT:-}" ] && [ -f "$SERVER_ROOT/.standin/calls.log" ]; then
		printf -- '--- stand-in calls ---\n%s\n' "$(cat "$SERVER_ROOT/.standin/calls.log")" >&2
	fi
}

assert_status() {
	[ "$status" -eq "$1" ] || {
		show_run
		fail "expected exit status $1, got $status"
	}
}

assert_output_has() {
	[[ $output == *"$1"* ]] || {
		show_run
		fail "expected the output to contain: $1"
	}
}

refute_output_has() {
	[[ $output != *"$1"* ]] || {
		show_run
		fail "expected the output NOT to contain: $1"
	}
}

calls() { cat "$SERVER_ROOT/.standin/calls.log" 2>/dev/null || true; }

assert_calls_have() {
	[[ $(calls) == *"$1"* ]] || {
		show_run
		fail "expected a stand-in call matching: $1"
	}
}

refute_calls_have() {
	[[ $(calls) != *"$1"* ]] || {
		show_run
		fail "expected no stand-in call matching: $1"
	}
}

# A server registered before this test: the agent's vault names ID (as the agent keeps
# it, Vault/Store/RegistrationKey) and the registration file is its copy.
seed_registration() { # ID
	mkdir -p "$SERVER_ROOT/var/lib/amazon/ssm/Vault/Store"
	printf '{"instanceID":"%s","region":"us-east-1","privateKey":"","privateKeyType":"Rsa"}' "$1" \
		>"$SERVER_ROOT/var/lib/amazon/ssm/Vault/Store/RegistrationKey"
	printf '{"ManagedInstanceID":"%s","Region":"us-east-1"}' "$1" >"$SERVER_ROOT/var/lib/amazon/ssm/registration"
}
# The managed instance ID the agent's own vault holds (empty when blanked).
vault_id() {
	jq -r '.instanceID // ""' "$SERVER_ROOT/var/lib/amazon/ssm/Vault/Store/RegistrationKey" 2>/dev/null || true
}
registered_id() { # prints the mi- id from the server's registration file
	local f="$SERVER_ROOT/var/lib/amazon/ssm/registration"
	[ -s "$f" ] && jq -r .ManagedInstanceID "$f"
}

assert_registered() { # [UNIT]
	local id unit=${1:-amazon-ssm-agent}
	id=$(registered_id) || {
		show_run
		fail "no registration file on the server"
	}
	[[ $id == mi-* ]] || fail "registration file has no managed instance ID: $id"
	[ -e "$SERVER_ROOT/.standin/systemd/$unit.active" ] || fail "agent service $unit not started"
	[ -e "$SERVER_ROOT/.standin/systemd/$unit.enabled" ] || fail "agent service $unit not enabled"
	grep -q 'Credentials ready' "$SERVER_ROOT/var/log/amazon/ssm/amazon-ssm-agent.log" || fail "the agent never connected"
	[ "$(vault_id)" = "$id" ] || fail "the agent's own identity ($(vault_id)) is not the registration file's $id"
	[ "$(emulator GET "/_emulator/nodes/$id" | jq -r .PingStatus)" = Online ] || fail "SSM does not show $id Online"
	grep -qx "machine=$(machine_digest "$SERVER_ROOT")" "$SERVER_ROOT/var/lib/amazon/ssm/activation-vending.machine" ||
		fail "the machine identity is not recorded beside the registration"
}

# The activation code(s) the stand-in agent received must appear in no output and
# in no file on the server other than the stand-in's own record; the script's
# private working directory must be gone.
assert_code_not_leaked() {
	local codes="$SERVER_ROOT/.standin/received-codes" code leaked
	[ -s "$codes" ] || fail "the stand-in agent received no code (nothing to check)"
	while IFS= read -r code; do
		[ -n "$code" ] || continue
		[[ $output != *"$code"* ]] || {
			show_run
			fail "the activation code appears in the script's output"
		}
		leaked=$(grep -rlF --exclude-dir=.standin -- "$code" "$SERVER_ROOT" || true)
		[ -z "$leaked" ] || fail "the activation code was written to: $leaked"
	done <"$codes"
	[ -z "$(find "$SERVER_ROOT/var/lib" -maxdepth 1 -name 'ssm-bootstrap.*' -print -quit)" ] ||
		fail "the script left its working directory behind"
}

# ------------------------------------------------------------- the emulator

emulator() { # METHOD PATH [JSON]
	if [ $# -ge 3 ]; then
		curl -sS --fail -X "$1" -H 'Content-Type: application/json' --data "$3" "$BOOTSTRAP_TEST_EMULATOR_URL$2"
	else
		curl -sS --fail -X "$1" "$BOOTSTRAP_TEST_EMULATOR_URL$2"
	fi
}

emulator_calls() { # OPERATION -> count so far
	emulator GET /_emulator/calls | jq -r --arg op "$1" '.[$op] // 0'
}

# ------------------------------------------------------------ the stub server

# For the conditions the real service cannot produce on demand (a server that
# never answers, a malformed body, an activation SSM refuses, an unknown CA).
# Sets STUB_URL (http), STUB_TLS_URL (https with a certificate for 127.0.0.1 and
# vending.test from a throwaway CA in DIR/ca.pem) and STUB_PROXY (an HTTP proxy
# whose CONNECT, to any host, reaches the https stub).
start_stub() { # DIR
	local dir=$1
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bats-test-ca \
		-keyout "$dir/ca.key" -out "$dir/ca.pem" >/dev/null 2>&1
	openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$dir/tls.key" -out "$dir/tls.csr" >/dev/null 2>&1
	printf 'subjectAltName=IP:127.0.0.1,DNS:vending.test\n' >"$dir/tls.ext"
	openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
		-extfile "$dir/tls.ext" -out "$dir/tls.pem" >/dev/null 2>&1
	"$TEST_PYTHON" "$BATS_TEST_DIRNAME/stub_server.py" --port-file "$dir/stub.port" --log "$dir/stub.log" \
		--cert "$dir/tls.pem" --key "$dir/tls.key" --tls-port-file "$dir/stub-tls.port" \
		--proxy-port-file "$dir/stub-proxy.port" --upstream "${BOOTSTRAP_TEST_VENDING_URL:-}" >"$dir/stub.out" 2>&1 &
	echo $! >"$dir/stub.pid"
	for _ in $(seq 1 100); do
		[ -s "$dir/stub.port" ] && [ -s "$dir/stub-tls.port" ] && [ -s "$dir/stub-proxy.port" ] && break
		sleep 0.05
	done
	[ -s "$dir/stub.port" ] && [ -s "$dir/stub-tls.port" ] && [ -s "$dir/stub-proxy.port" ] ||
		fail "stub server did not start: $(cat "$dir/stub.out")"
	STUB_URL="http://127.0.0.1:$(cat "$dir/stub.port")"
	STUB_TLS_URL="https://127.0.0.1:$(cat "$dir/stub-tls.port")"
	STUB_CA="$dir/ca.pem"
	STUB_PROXY="http://127.0.0.1:$(cat "$dir/stub-proxy.port")"
	export STUB_URL STUB_TLS_URL STUB_CA STUB_PROXY
}

stop_stub() { # DIR
	local pid
	pid=$(cat "$1/stub.pid" 2>/dev/null) || return 0
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
