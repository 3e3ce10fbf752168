#!/usr/bin/env bash
# bootstrap-linux.sh - register this server with AWS Systems Manager (hybrid
# activation) using an activation vended by the activation-vending service.
#
# Run it as root at boot, from wherever you host it:
#   curl -fsS --proto '=https' https://artifacts.example.internal/bootstrap-linux.sh | sudo bash -s -- --url https://...
# or copy it onto the image and run it from a systemd unit or cloud-init. When it
# is piped into bash, bash reads the script from stdin: every command that could
# read stdin gets </dev/null.
# `--help` lists every flag, its environment variable twin and the exit codes.
#
# Secrets: the activation code lives only in shell variables of this process.
# It is never written to a file, never printed (also not with `bash -x`: every
# function that touches it turns xtrace off first), and output of the AWS tools
# is filtered to mask it. The one place it is exposed is the argument list of
# `ssm-setup-cli` / `amazon-ssm-agent -register` while they run: both tools
# accept the code only as a command-line flag (no stdin or environment option),
# so local users who can list processes could see it for those seconds.
#
# Needs only bash >= 4.2, coreutils and curl (installed if missing); gpg to
# verify what it downloads. Supported: Amazon Linux 2/2023, RHEL, CentOS, Fedora,
# Rocky, Alma, Oracle Linux, Debian, Ubuntu, SLES/openSUSE; x86_64 and aarch64.
set -euo pipefail
umask 077

readonly PROG=bootstrap-linux
readonly EXIT_OK=0 EXIT_USAGE=2 EXIT_FETCH=3 EXIT_INSTALL=4 EXIT_REGISTER=5 EXIT_PLATFORM=6
readonly MASK='********'
readonly DEB_SERVICE=amazon-ssm-agent
readonly SNAP_SERVICE=snap.amazon-ssm-agent.amazon-ssm-agent
# The instance metadata address never goes through a proxy (AWS's proxy guidance for the agent).
readonly IMDS_NO_PROXY=169.254.169.254
readonly DEFAULT_SIGNING_KEY=/etc/activation-vending/ssm-agent-signing-key.asc

usage() {
	cat <<'EOF'
Usage: bootstrap-linux.sh --url URL [options]
       bootstrap-linux.sh --prepare-image

Fetches an SSM hybrid activation from the activation-vending service, registers
this server with the SSM Agent (the installed agent if there is one, else
ssm-setup-cli from the regional AWS download location, else the agent package),
starts and enables the agent, and waits until the agent reports itself
registered and connected. Every download it runs is verified against AWS's
published signature first.

Options (each has an environment variable twin; the flag wins):
  --url URL             VENDING_URL        Service base URL (required). https://, or
                                           http:// to a loopback address for local tests.
  --pool NAME           VENDING_POOL       Activation pool (default: the service's "default"):
                                           1-64 of A-Z a-z 0-9 _ -. A pool that does not
                                           exist, is disabled, refuses this server's address
                                           or is misconfigured is exit 3 at once, not retried.
  --instance NAME       VENDING_INSTANCE   The name the vending service knows this server by,
                                           so that a retry gets the same activation back
                                           instead of a new slot (default: the host name). It
                                           is not the server's name in SSM. A host name: dot-
                                           separated labels of A-Z a-z 0-9 _ -, 1-63 each, not
                                           starting or ending with -, 253 in all.
  --region REGION       VENDING_REGION     Override the region the service returns.
  --api-id ID           VENDING_API_ID     Send "x-apigw-api-id: ID", needed when --url is a
                                           VPC endpoint's own DNS name
                                           (https://vpce-....execute-api.REGION.vpce.amazonaws.com/STAGE).
  --ca-bundle FILE      VENDING_CA_BUNDLE  PEM bundle to verify the service's certificate.
  --proxy URL           VENDING_PROXY      HTTP(S) proxy for the fetch, the downloads and the
                                           agent (written to a systemd drop-in for the agent's
                                           unit). Default: https_proxy / HTTPS_PROXY when set.
                                           Loopback addresses are never proxied.
  --no-proxy LIST       VENDING_NO_PROXY   Comma-separated hosts/domains not to proxy (default:
                                           no_proxy / NO_PROXY); the agent gets
                                           no_proxy=169.254.169.254,LIST.
  --max-wait SECONDS    VENDING_MAX_WAIT   Give up a network step (the fetch, each download,
                                           installing curl) after this long (default 120).
  --online-wait SECONDS VENDING_ONLINE_WAIT
                                           After starting the agent, wait this long for it to
                                           report itself registered and connected (default 90).
  --signing-key FILE    VENDING_SIGNING_KEY
                                           AWS's SSM Agent public key (armored), to verify
                                           ssm-setup-cli and the agent package
                                           (default /etc/activation-vending/ssm-agent-signing-key.asc).
  --allow-unverified    VENDING_ALLOW_UNVERIFIED=1
                                           Run ssm-setup-cli / install the package even when
                                           its signature cannot be checked (no gpg, no key,
                                           no .sig). A signature that fails is never accepted.
                                           Without gpg, ssm-setup-cli gets
                                           -skip-signature-validation (it runs gpg itself).
  --force               VENDING_FORCE=1    Re-register even if this server is registered.
  --prepare-image       VENDING_PREPARE_IMAGE=1
                                           Make this machine ready to be captured as an image:
                                           stop the agent and clear its registration, so every
                                           clone registers as itself. Needs no --url.
  --dry-run             VENDING_DRY_RUN=1  Fetch an activation to prove connectivity, print
                                           every step with the code masked, change nothing.
  -h, --help                               Show this help.

Each vend request carries "X-Machine-Id: <SHA-256 of /etc/machine-id, else of
/sys/class/dmi/id/product_uuid>" (never the raw value). The same digest is kept in
/var/lib/amazon/ssm/activation-vending.machine beside the agent's registration: a
registered server whose machine id changed (a clone of a registered image, a
re-image) clears the old registration and registers afresh.

Once registered it reports the registration to the service (POST /registrations:
the managed instance ID, the activation ID, the instance name), which names and
tags the node ("confirmed: mi-..." on stdout). When SSM refuses the code
(InvalidActivation, ActivationExpired, RegistrationLimitExceeded) it reports the
refusal and asks for an activation once more. A report that fails is a WARNING,
never a different exit status.

Advanced (environment only):
  BOOTSTRAP_DOWNLOAD_BASE  Mirror of the regional bucket (https:// or file://) laid out
                           as .../latest/{linux,debian}_{amd64,arm64}/... with AWS's .sig
                           files beside the downloads
                           (default https://amazon-ssm-REGION.s3.REGION.amazonaws.com).
  BOOTSTRAP_MANIFEST_URL   Passed to ssm-setup-cli as -manifest-url.
  BOOTSTRAP_REGISTER_TIMEOUT
                           Seconds `amazon-ssm-agent -register` may take (default 60, as
                           ssm-setup-cli gives it; 1-3600).
  BOOTSTRAP_ROOT           Prefix for system paths (/etc, /var, /run, /snap, /sys); for
                           tests only. Skips the root check.

Exit codes:
  0  registered and online (or already registered and --force not given; or dry run
     or --prepare-image done)
  1  unexpected internal error
  2  usage error (unknown flag, missing --url, invalid value)
  3  fetch failed (service unreachable, gave up after --max-wait, HTTP error such as
     400 for a name or pool the service refuses, malformed response); not retried
     and named with the pool: 404 PoolNotFound, 403 PoolDisabled or Forbidden (this
     server's address is not in the pool's allowed_cidrs), 500 PoolMisconfigured
  4  install failed (curl, a download, a signature that cannot be verified or does
     not match, the agent package)
  5  registration failed: SSM refused the activation ("refused: <Code>" on stdout, e.g.
     refused: InvalidActivation), -register did not finish within 60 s, the agent's own
     identity and its registration file do not agree afterwards, or it was not seen
     getting credentials from SSM within --online-wait. A failed registration leaves
     the machine UNREGISTERED (the agent clears its identity before asking SSM): the
     stale registration file is removed and the next run registers afresh.
  6  unsupported platform (distribution, architecture) or not run as root
EOF
}

# --------------------------------------------------------------------- output

log() { printf '%(%Y-%m-%dT%H:%M:%S%z)T %s: %s\n' -1 "$PROG" "$*" >&2; }
die() {
	local code=$1
	shift
	log "ERROR: $*"
	exit "$code"
}
plan() { printf '[dry-run] %s\n' "$*"; }

# xtrace guard: secrets must not appear in `bash -x` traces.
XTRACE_SAVED=0
xtrace_off() {
	case $- in
	*x*) XTRACE_SAVED=1 ;;
	*) XTRACE_SAVED=0 ;;
	esac
	set +x
}
xtrace_restore() { if [ "$XTRACE_SAVED" = 1 ]; then set -x; fi; }

# A line with the activation code and any URL's user:password@ masked. The agent and
# ssm-setup-cli log every proxy variable's value, credentials included.
redact_line() { # LINE
	local rest=$1 out='' re='([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@[:space:]]+@'
	if [ -n "${ACT_CODE:-}" ]; then rest=${rest//"$ACT_CODE"/$MASK}; fi
	while [[ $rest =~ $re ]]; do
		out+="${rest%%"${BASH_REMATCH[0]}"*}${BASH_REMATCH[1]}$MASK@"
		rest=${rest#*"${BASH_REMATCH[0]}"}
	done
	printf '%s' "$out$rest"
}

# Copies stdin to stderr, masked (redact_line); also to FILE when given.
mask_stream() { # [FILE]
	local line
	while IFS= read -r line || [ -n "$line" ]; do
		line=$(redact_line "$line")
		printf '    | %s\n' "$line" >&2
		if [ -n "${1:-}" ]; then printf '%s\n' "$line" >>"$1"; fi
	done
}

# A URL for the log: user:password@ replaced.
redact_url() {
	local url=$1
	if [[ $url =~ ^([a-z]+://)[^/@]*@(.*)$ ]]; then url="${BASH_REMATCH[1]}${MASK}@${BASH_REMATCH[2]}"; fi
	printf '%s' "$url"
}

# ---------------------------------------------------------------------- input

truthy() {
	case "${1:-}" in
	1 | true | TRUE | True | yes | YES | on) return 0 ;;
	*) return 1 ;;
	esac
}

URL=${VENDING_URL:-}
POOL=${VENDING_POOL:-}
INSTANCE=${VENDING_INSTANCE:-}
REGION=${VENDING_REGION:-}
API_ID=${VENDING_API_ID:-}
CA_BUNDLE=${VENDING_CA_BUNDLE:-}
PROXY=${VENDING_PROXY:-${https_proxy:-${HTTPS_PROXY:-}}}
NO_PROXY_LIST=${VENDING_NO_PROXY:-${no_proxy:-${NO_PROXY:-}}}
MAX_WAIT=${VENDING_MAX_WAIT:-120}
ONLINE_WAIT=${VENDING_ONLINE_WAIT:-90}
ROOT=${BOOTSTRAP_ROOT:-}
SIGNING_KEY=${VENDING_SIGNING_KEY:-}
FORCE=0
DRY_RUN=0
PREPARE_IMAGE=0
ALLOW_UNVERIFIED=0
if truthy "${VENDING_FORCE:-}"; then FORCE=1; fi
if truthy "${VENDING_DRY_RUN:-}"; then DRY_RUN=1; fi
if truthy "${VENDING_PREPARE_IMAGE:-}"; then PREPARE_IMAGE=1; fi
if truthy "${VENDING_ALLOW_UNVERIFIED:-}"; then ALLOW_UNVERIFIED=1; fi
DOWNLOAD_BASE=${BOOTSTRAP_DOWNLOAD_BASE:-}
MANIFEST_URL=${BOOTSTRAP_MANIFEST_URL:-}

usage_error() {
	printf '%s: %s\n' "$PROG" "$*" >&2
	printf "Try '%s --help'.\n" "$PROG" >&2
	exit "$EXIT_USAGE"
}

parse_args() {
	local opt val
	while [ $# -gt 0 ]; do
		opt=$1
		val=
		case "$opt" in
		--*=*)
			val=${opt#*=}
			opt=${opt%%=*}
			;;
		esac
		case "$opt" in
		-h | --help)
			usage
			exit "$EXIT_OK"
			;;
		--force) FORCE=1 ;;
		--dry-run) DRY_RUN=1 ;;
		--prepare-image) PREPARE_IMAGE=1 ;;
		--allow-unverified) ALLOW_UNVERIFIED=1 ;;
		--url | --pool | --instance | --region | --api-id | --ca-bundle | --max-wait | --online-wait | \
			--proxy | --no-proxy | --signing-key)
			if [ -z "$val" ] && [[ $1 != *=* ]]; then
				[ $# -ge 2 ] || usage_error "$opt needs a value"
				val=$2
				shift
			fi
			case "$opt" in
			--url) URL=$val ;;
			--pool) POOL=$val ;;
			--instance) INSTANCE=$val ;;
			--region) REGION=$val ;;
			--api-id) API_ID=$val ;;
			--ca-bundle) CA_BUNDLE=$val ;;
			--max-wait) MAX_WAIT=$val ;;
			--online-wait) ONLINE_WAIT=$val ;;
			--proxy) PROXY=$val ;;
			--no-proxy) NO_PROXY_LIST=$val ;;
			--signing-key) SIGNING_KEY=$val ;;
			esac
			;;
		*) usage_error "unknown argument: $opt" ;;
		esac
		shift
	done
}

# Loopback hosts may be reached over plain http (local tests); nothing else.
is_loopback_host() {
	case "$1" in
	localhost | 127.* | '[::1]') return 0 ;;
	*) return 1 ;;
	esac
}

url_host() {
	local rest=${1#*://}
	rest=${rest%%/*}
	rest=${rest##*@}
	case "$rest" in
	\[*) rest=${rest%%]*}] ;;
	*) rest=${rest%%:*} ;;
	esac
	printf '%s' "$rest"
}

# The service's rules (lambda/src/pool/state.rs): a host name of DNS labels (plus `_`).
valid_instance_name() {
	local name=$1 label
	[ -n "$name" ] && [ "${#name}" -le 253 ] || return 1
	[[ $name != *. ]] || return 1
	local -a labels
	IFS=. read -r -a labels <<<"$name"
	for label in "${labels[@]}"; do
		[[ $label =~ ^[A-Za-z0-9_-]{1,63}$ ]] || return 1
		[[ $label != -* && $label != *- ]] || return 1
	done
}

valid_pool_name() { [[ $1 =~ ^[A-Za-z0-9_-]{1,64}$ ]]; }

valid_region() { [[ $1 =~ ^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$ ]]; }

validate_url() {
	[ -n "$URL" ] || usage_error "--url (or VENDING_URL) is required"
	case "$URL" in
	https://?*) ;;
	http://?*)
		is_loopback_host "$(url_host "$URL")" ||
			usage_error "--url must be https:// (plain http is accepted only for loopback addresses)"
		;;
	*) usage_error "--url must start with https://" ;;
	esac
	case "$URL" in
	*'?'* | *'#'* | *[[:space:]]*) usage_error "--url must not contain a query, fragment or spaces (use --pool/--instance)" ;;
	esac
}

validate_seconds() { # NAME VALUE MIN MAX
	if ! [[ $2 =~ ^[0-9]{1,5}$ ]] || [ "$((10#$2))" -lt "$3" ] || [ "$((10#$2))" -gt "$4" ]; then
		usage_error "$1 must be a whole number of seconds between $3 and $4"
	fi
}

validate_names() {
	if [ -n "$INSTANCE" ] && ! valid_instance_name "$INSTANCE"; then
		usage_error "--instance '$INSTANCE' is not a host name the service accepts: dot-separated labels of 1-63 A-Z a-z 0-9 _ -, not starting or ending with -, 253 characters in all"
	fi
	if [ -z "$INSTANCE" ]; then
		INSTANCE=${HOSTNAME:-$(uname -n)}
		if ! valid_instance_name "$INSTANCE"; then
			log "warning: the host name '$INSTANCE' is not a name the service accepts; asking without one (pass --instance)"
			INSTANCE=
		fi
	fi
	case "${INSTANCE,,}" in
	localhost | localhost.localdomain | ip-[0-9]*)
		log "note: the service does not key a default name like '$INSTANCE' (clones share it): every retry takes a fresh slot; pass --instance with a unique name"
		;;
	esac
	if [ -n "$POOL" ] && ! valid_pool_name "$POOL"; then
		usage_error "--pool '$POOL' is not a pool name: 1-64 characters of A-Z a-z 0-9 _ -"
	fi
}

validate_network_options() {
	if [ -n "$API_ID" ]; then
		[[ $API_ID =~ ^[a-z0-9]{1,32}$ ]] || usage_error "--api-id must be the API's id (lower-case letters and digits)"
	fi
	if [ -n "$CA_BUNDLE" ]; then
		[ -r "$CA_BUNDLE" ] || usage_error "--ca-bundle '$CA_BUNDLE' is not a readable file"
	fi
	if [ -n "$PROXY" ]; then
		[[ $PROXY =~ ^https?://[^[:space:]\"\'\\]+$ ]] ||
			usage_error "--proxy must be an http:// or https:// URL (got '$(redact_url "$PROXY")')"
	fi
	local list_re='^[][A-Za-z0-9.,:_*/-]+$'
	if [ -n "$NO_PROXY_LIST" ]; then
		[[ $NO_PROXY_LIST =~ $list_re ]] ||
			usage_error "--no-proxy must be a comma-separated list of hosts, domains or addresses"
	fi
}

validate_downloads() {
	if [ -n "$DOWNLOAD_BASE" ]; then
		case "$DOWNLOAD_BASE" in
		https://?* | file:///*) ;;
		*) usage_error "BOOTSTRAP_DOWNLOAD_BASE must be https:// or file:///" ;;
		esac
	fi
	if [ -n "$MANIFEST_URL" ]; then
		case "$MANIFEST_URL" in
		https://?*) ;;
		*) usage_error "BOOTSTRAP_MANIFEST_URL must be https://" ;;
		esac
	fi
	if [ -n "$SIGNING_KEY" ] && [ ! -r "$SIGNING_KEY" ]; then
		usage_error "--signing-key '$SIGNING_KEY' is not a readable file"
	fi
}

validate_inputs() {
	validate_seconds --max-wait "$MAX_WAIT" 1 86400
	validate_seconds --online-wait "$ONLINE_WAIT" 0 3600
	validate_seconds BOOTSTRAP_REGISTER_TIMEOUT "$REGISTER_TIMEOUT" 1 3600
	MAX_WAIT=$((10#$MAX_WAIT))
	ONLINE_WAIT=$((10#$ONLINE_WAIT))
	REGISTER_TIMEOUT=$((10#$REGISTER_TIMEOUT))
	[ "$PREPARE_IMAGE" = 1 ] && return 0
	validate_url
	validate_names
	if [ -n "$REGION" ]; then valid_region "$REGION" || usage_error "--region '$REGION' is not a region name"; fi
	validate_network_options
	validate_downloads
}

# ------------------------------------------------------------------- platform

DISTRO_ID=
DISTRO_NAME=
FAMILY=    # rpm | deb | suse
PKG=       # dnf | yum | apt-get | zypper
ARCH=      # amd64 | arm64
BUCKET_DIR= # linux_amd64 | debian_arm64 ...

os_release_value() { # KEY FILE
	local line key=$1 file=$2 v
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in
		"$key="*)
			v=${line#*=}
			v=${v#[\"\']}
			v=${v%[\"\']}
			printf '%s' "$v"
			return 0
			;;
		esac
	done <"$file"
	return 0
}

detect_platform() {
	local file="$ROOT/etc/os-release" like word
	[ -r "$file" ] || file="$ROOT/usr/lib/os-release"
	[ -r "$file" ] || die "$EXIT_PLATFORM" "unsupported platform: no /etc/os-release; supported: Amazon Linux, RHEL, CentOS, Fedora, Rocky, Alma, Debian, Ubuntu, SUSE"
	DISTRO_ID=$(os_release_value ID "$file")
	DISTRO_NAME=$(os_release_value PRETTY_NAME "$file")
	like=$(os_release_value ID_LIKE "$file")
	for word in $DISTRO_ID $like; do
		case "$word" in
		amzn | rhel | centos | fedora | rocky | almalinux | ol | redhat) FAMILY=rpm ;;
		debian | ubuntu) FAMILY=deb ;;
		sles | sled | sle_hpc | suse | opensuse | opensuse-leap | opensuse-tumbleweed) FAMILY=suse ;;
		*) continue ;;
		esac
		break
	done
	[ -n "$FAMILY" ] ||
		die "$EXIT_PLATFORM" "unsupported distribution '${DISTRO_NAME:-$DISTRO_ID}' (ID=$DISTRO_ID${like:+, ID_LIKE=$like}); supported: Amazon Linux, RHEL, CentOS, Fedora, Rocky, Alma, Debian, Ubuntu, SUSE"

	case "$(uname -m)" in
	x86_64 | amd64) ARCH=amd64 ;;
	aarch64 | arm64) ARCH=arm64 ;;
	*) die "$EXIT_PLATFORM" "unsupported architecture '$(uname -m)'; supported: x86_64, aarch64" ;;
	esac

	case "$FAMILY" in
	rpm)
		if command -v dnf >/dev/null 2>&1; then PKG=dnf; else PKG=yum; fi
		BUCKET_DIR=linux_$ARCH
		;;
	deb)
		PKG=apt-get
		BUCKET_DIR=debian_$ARCH
		;;
	suse)
		PKG=zypper
		BUCKET_DIR=linux_$ARCH
		;;
	esac
	log "platform: ${DISTRO_NAME:-$DISTRO_ID} ($FAMILY family, $PKG), $ARCH"
}

pkg_install_cmd() { # prints the install command for the packages/files given
	case "$PKG" in
	dnf | yum) printf '%s install -y %s' "$PKG" "$*" ;;
	apt-get) printf 'apt-get install -y %s' "$*" ;;
	zypper) printf 'zypper --non-interactive install %s' "$*" ;;
	esac
}

pkg_install() { # packages or local package files
	local rc=0
	case "$PKG" in
	dnf | yum) "$PKG" install -y "$@" </dev/null 2>&1 | mask_stream || rc=$? ;;
	apt-get)
		export DEBIAN_FRONTEND=noninteractive
		# A fresh image may have no package lists yet; the lock timeout rides out
		# cloud-init or unattended-upgrades holding dpkg at boot.
		apt-get -q -o DPkg::Lock::Timeout=120 update </dev/null 2>&1 | mask_stream || true
		apt-get -q -y -o DPkg::Lock::Timeout=120 install "$@" </dev/null 2>&1 | mask_stream || rc=$?
		;;
	zypper) ZYPP_LOCK_TIMEOUT=120 zypper --non-interactive install "$@" </dev/null 2>&1 | mask_stream || rc=$? ;;
	esac
	return "$rc"
}

# Exponential backoff with equal jitter: half fixed, half random; doubling up to 16 s.
BACKOFF_MS=1000
backoff_reset() { BACKOFF_MS=1000; }
backoff_next_ms() { # -> prints the next wait in ms, capped by DEADLINE
	local wait_ms remaining
	wait_ms=$((BACKOFF_MS / 2 + RANDOM * (BACKOFF_MS / 2) / 32768))
	BACKOFF_MS=$((BACKOFF_MS < 16000 ? BACKOFF_MS * 2 : 16000))
	remaining=$((DEADLINE - SECONDS))
	if [ $((wait_ms / 1000)) -ge "$remaining" ]; then wait_ms=$((remaining > 0 ? remaining * 1000 : 0)); fi
	printf '%d' "$wait_ms"
}

# Sleep for $1 milliseconds.
sleep_ms() { sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }

# curl, when it is missing, is installed with the package manager. At boot the
# network may not be up yet, so the install is retried until --max-wait.
ensure_curl() {
	command -v curl >/dev/null 2>&1 && return 0
	# Nothing can be fetched without curl (not even in a dry run).
	[ "$DRY_RUN" = 0 ] || die "$EXIT_INSTALL" "curl is not installed; install it with '$(pkg_install_cmd curl)'"
	local attempt=0 wait_ms
	DEADLINE=$((SECONDS + MAX_WAIT))
	backoff_reset
	log "curl is not installed; installing it: $(pkg_install_cmd curl)"
	while :; do
		attempt=$((attempt + 1))
		if pkg_install curl && command -v curl >/dev/null 2>&1; then
			log "installed curl"
			return 0
		fi
		[ "$SECONDS" -lt "$DEADLINE" ] ||
			die "$EXIT_INSTALL" "curl is required and could not be installed in ${MAX_WAIT}s ($attempt attempts); install it with '$(pkg_install_cmd curl)' and run again"
		wait_ms=$(backoff_next_ms)
		log "installing curl failed (attempt $attempt); retrying in $((wait_ms / 1000))s"
		sleep_ms "$wait_ms"
	done
}

# ------------------------------------------------------------ the SSM Agent

# The agent as installed: the deb/rpm package, or the snap (Ubuntu), which has its
# own unit and binary path. Set by detect_agent.
SERVICE=$DEB_SERVICE
AGENT_BIN=
SSM_CLI=
detect_agent() {
	local snap_dir="$ROOT/snap/amazon-ssm-agent/current"
	if [ -x "$snap_dir/amazon-ssm-agent" ]; then
		SERVICE=$SNAP_SERVICE
		AGENT_BIN="$snap_dir/amazon-ssm-agent"
		SSM_CLI="$snap_dir/ssm-cli"
	elif command -v amazon-ssm-agent >/dev/null 2>&1; then
		SERVICE=$DEB_SERVICE
		AGENT_BIN=$(command -v amazon-ssm-agent)
		SSM_CLI=$(command -v ssm-cli 2>/dev/null || true)
	else
		SERVICE=$DEB_SERVICE
		AGENT_BIN=
		SSM_CLI=
	fi
}

REG_FILE=
IDENTITY_FILE=
AGENT_LOG=
VAULT_IDENTITY=
# The managed instance ID in the registration file: a copy the agent writes after a
# registration succeeds, and never removes (not on a failed registration, not on -clear).
registration_file_id() {
	local content
	[ -s "$REG_FILE" ] || return 1
	content=$(<"$REG_FILE")
	[[ $content =~ \"ManagedInstanceID\"[[:space:]]*:[[:space:]]*\"(mi-[0-9a-fA-F]+)\" ]] || return 1
	printf '%s' "${BASH_REMATCH[1]}"
}

# Runs a command under `timeout` when the host has it.
with_timeout() { # SECONDS COMMAND...
	local seconds=$1
	shift
	if command -v timeout >/dev/null 2>&1; then timeout "$seconds" "$@"; else "$@"; fi
}

# The agent's own identity, its truth: what `ssm-cli get-instance-information` reads
# from the agent's vault (local only: it never asks SSM); without ssm-cli, the vault's
# instanceID itself (only the ID is read, never the key beside it). Empty after a failed
# registration, which blanks it before asking SSM, and after -register -clear.
agent_identity() {
	local info re='"instance-id"[[:space:]]*:[[:space:]]*"(mi-[0-9a-fA-F]+)"'
	if [ -n "$SSM_CLI" ] && [ -x "$SSM_CLI" ]; then
		info=$(with_timeout 60 "$SSM_CLI" get-instance-information </dev/null 2>/dev/null) || return 1
		[[ $info =~ $re ]] || return 1
		printf '%s' "${BASH_REMATCH[1]}"
		return 0
	fi
	[ -r "$VAULT_IDENTITY" ] || return 1
	info=$(sed -n 's/.*"instanceID"[[:space:]]*:[[:space:]]*"\(mi-[0-9a-fA-F]*\)".*/\1/p' "$VAULT_IDENTITY" 2>/dev/null) || return 1
	[ -n "$info" ] || return 1
	printf '%s' "$info"
}

# Registered means: the agent's own identity and the registration file name the same
# managed instance. Prints it.
registered_instance_id() {
	local file_id agent_id
	file_id=$(registration_file_id) || return 1
	agent_id=$(agent_identity) || return 1
	[ "$file_id" = "$agent_id" ] || return 1
	printf '%s' "$file_id"
}

have_systemctl() { command -v systemctl >/dev/null 2>&1; }

service_active() {
	if have_systemctl; then
		systemctl is-active --quiet "$SERVICE" </dev/null
	else
		service "$SERVICE" status </dev/null >/dev/null 2>&1
	fi
}

stop_service() {
	if have_systemctl; then
		systemctl stop "$SERVICE" </dev/null 2>&1 | mask_stream || true
	elif command -v service >/dev/null 2>&1; then
		service "$SERVICE" stop </dev/null 2>&1 | mask_stream || true
	fi
}

# The agent must not inherit this script's lock (fd 9): started by `service` (no
# systemd), it would hold the lock as long as it runs and block every later run.
enable_and_start_service() {
	if have_systemctl; then
		systemctl daemon-reload </dev/null 9>&- 2>&1 | mask_stream || true
		systemctl enable "$SERVICE" </dev/null 9>&- 2>&1 | mask_stream || return 1
		systemctl restart "$SERVICE" </dev/null 9>&- 2>&1 | mask_stream || return 1
	elif command -v service >/dev/null 2>&1; then
		service "$SERVICE" restart </dev/null 9>&- 2>&1 | mask_stream || return 1
	else
		log "neither systemctl nor service found; start $SERVICE by hand"
		return 1
	fi
}

# ---------------------------------------------------- the agent's proxy drop-in

proxy_dropin_path() { printf '%s/etc/systemd/system/%s.service.d/activation-vending-proxy.conf' "$ROOT" "$SERVICE"; }

agent_no_proxy() { printf '%s%s' "$IMDS_NO_PROXY" "${NO_PROXY_LIST:+,$NO_PROXY_LIST}"; }

# systemd expands % specifiers in Environment=; a literal % is %%.
systemd_escape() { printf '%s' "${1//%/%%}"; }

proxy_dropin_text() {
	local proxy no_proxy
	proxy=$(systemd_escape "$PROXY")
	no_proxy=$(systemd_escape "$(agent_no_proxy)")
	printf '# Written by bootstrap-linux.sh (activation vending): the SSM Agent reaches AWS\n'
	printf '# through this proxy. The instance metadata address never goes through it.\n'
	printf '[Service]\n'
	printf 'Environment="https_proxy=%s"\n' "$proxy"
	printf 'Environment="http_proxy=%s"\n' "$proxy"
	printf 'Environment="no_proxy=%s"\n' "$no_proxy"
}

# Writes the drop-in when --proxy is in effect; returns 0 when the file changed.
write_proxy_dropin() {
	[ -n "$PROXY" ] || return 1
	local file text
	file=$(proxy_dropin_path)
	text=$(proxy_dropin_text)
	if [ -f "$file" ] && [ "$(<"$file")" = "$text" ]; then return 1; fi
	mkdir -p "$(dirname "$file")"
	# Readable by root only: a proxy URL may carry a password.
	printf '%s\n' "$text" >"$file"
	chmod 0600 "$file"
	log "agent proxy: $(redact_url "$PROXY") (no_proxy=$(agent_no_proxy)) in $file"
	return 0
}

# ---------------------------------------------------------- machine identity

# SHA-256 hex of /etc/machine-id, else of the DMI product UUID; nothing when
# neither is readable or holds a placeholder. The raw value is never sent or logged.
MACHINE_ID=
machine_id_digest() {
	local file value
	for file in "$ROOT/etc/machine-id" "$ROOT/sys/class/dmi/id/product_uuid"; do
		[ -r "$file" ] || continue
		value=$(<"$file") || continue
		value=${value#"${value%%[![:space:]]*}"}
		value=${value%"${value##*[![:space:]]}"}
		case "${value,,}" in
		'' | uninitialized | *[!0-9a-f-]* | 00000000-0000-0000-0000-000000000000 | ffffffff-ffff-ffff-ffff-ffffffffffff) continue ;;
		esac
		command -v sha256sum >/dev/null 2>&1 || return 0
		value=$(printf '%s' "$value" | sha256sum)
		printf '%s' "${value%% *}"
		return 0
	done
}

# What this script recorded beside a registration: the machine it was made on
# (machine=), its managed instance ID (instance=) and whether the agent was seen
# online (online=1).
recorded_value() { # KEY
	local line
	[ -r "$IDENTITY_FILE" ] || return 1
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in "$1="*) printf '%s' "${line#"$1"=}" && return 0 ;; esac
	done <"$IDENTITY_FILE"
	return 1
}

record_machine() { # INSTANCE_ID ONLINE(0|1)
	mkdir -p "$(dirname "$IDENTITY_FILE")"
	printf 'machine=%s\ninstance=%s\nonline=%s\n' "$MACHINE_ID" "$1" "$2" >"$IDENTITY_FILE"
}

# Removes the registration so this machine can register as itself: the agent's
# -register -clear (its vault keys and hardware fingerprint), the registration
# file, and our record. The agent is stopped first.
clear_registration() {
	stop_service
	if [ -n "$AGENT_BIN" ]; then
		"$AGENT_BIN" -register -clear </dev/null 2>&1 | mask_stream || log "warning: $SERVICE -register -clear failed"
	else
		rm -f -- "$ROOT/var/lib/amazon/ssm/Vault/Store/RegistrationKey" "$ROOT/var/lib/amazon/ssm/Vault/Store/InstanceFingerprint"
	fi
	rm -f -- "$REG_FILE" "$IDENTITY_FILE"
}

prepare_image() {
	detect_agent
	if [ "$DRY_RUN" = 1 ]; then
		plan "stop $SERVICE; ${AGENT_BIN:-amazon-ssm-agent} -register -clear; remove $REG_FILE and $IDENTITY_FILE"
		printf 'dry run complete: nothing was changed\n'
		exit "$EXIT_OK"
	fi
	local existing
	existing=$(registration_file_id) || existing=
	clear_registration
	log "prepared for imaging: $SERVICE stopped, ${existing:-no} registration cleared${existing:+ (deregister $existing in SSM if it is not coming back)}"
	log "before capturing: empty /etc/machine-id (systemd regenerates it on the clone's first boot)"
	printf 'image prepared: the agent is stopped and unregistered\n'
	exit "$EXIT_OK"
}

# ------------------------------------------------------------------ the fetch

WORK=
cleanup() {
	if [ -n "$WORK" ] && [ -d "$WORK" ]; then rm -rf -- "$WORK"; fi
}

urlencode() {
	local s=$1 out='' c i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case "$c" in
		[A-Za-z0-9._~-]) out+=$c ;;
		*) printf -v c '%%%02X' "'$c" && out+=$c ;;
		esac
	done
	printf '%s' "$out"
}

# The vend always names this server (--force too) and sends X-Machine-Id: only such a
# vend can be confirmed afterwards (POST /registrations).
activation_url() {
	local base=${URL%/} query=''
	case "$base" in
	*/activation) ;;
	*) base+=/activation ;;
	esac
	if [ -n "$INSTANCE" ]; then query="instance=$(urlencode "$INSTANCE")"; fi
	if [ -n "$POOL" ]; then query="pool=$(urlencode "$POOL")${query:+&$query}"; fi
	printf '%s%s' "$base" "${query:+?$query}"
}

# Where registrations are reported: beside /activation, with the vend's pool query.
registrations_url() {
	local base=${URL%/}
	base=${base%/activation}
	printf '%s/registrations%s' "$base" "${POOL:+?pool=$(urlencode "$POOL")}"
}

retry_after_seconds() { # header file -> integer seconds or nothing
	local line value=
	[ -f "$1" ] || return 0
	while IFS= read -r line || [ -n "$line" ]; do
		line=${line%$'\r'}
		case "${line,,}" in
		retry-after:*)
			value=${line#*:}
			value=${value//[[:space:]]/}
			;;
		esac
	done <"$1"
	if [[ $value =~ ^[0-9]{1,5}$ ]]; then printf '%d' "$((10#$value))"; fi
}

# curl's proxy options: the given proxy (or none, whatever the environment says),
# never for loopback and the --no-proxy list.
curl_proxy_args() { # URL -> one option per line
	local host
	host=$(url_host "$1")
	if [ -z "$PROXY" ] || is_loopback_host "$host"; then
		printf '%s\n' --proxy ''
	else
		printf '%s\n' --proxy "$PROXY" --noproxy "127.0.0.1,localhost,::1${NO_PROXY_LIST:+,$NO_PROXY_LIST}"
	fi
}

# ---------------------------------------------------------------- JSON parsing

# The service's answer is a flat JSON object of strings. This reads it without jq
# (not on every image): the string members go into JSON_FIELDS, anything else is
# skipped; returns 1 unless the whole text is one well-formed object.
declare -A JSON_FIELDS=()
JSON_REST=
json_skip_ws() { JSON_REST=${JSON_REST#"${JSON_REST%%[![:space:]]*}"}; }

JSON_STRING=
json_take_string() { # JSON_REST starts with a string -> JSON_STRING (unescaped), rest consumed
	local re='^"(([^"\\]|\\.)*)"' raw out='' c hex
	[[ $JSON_REST =~ $re ]] || return 1
	raw=${BASH_REMATCH[1]}
	JSON_REST=${JSON_REST:${#BASH_REMATCH[0]}}
	while [ -n "$raw" ]; do
		c=${raw%%\\*}
		out+=$c
		raw=${raw:${#c}}
		[ -n "$raw" ] || break
		c=${raw:1:1}
		case "$c" in
		'"' | \\ | /) out+=$c && raw=${raw:2} ;;
		b | f | n | r | t) out+=' ' && raw=${raw:2} ;;
		u)
			hex=${raw:2:4}
			[[ $hex =~ ^[0-9A-Fa-f]{4}$ ]] || return 1
			if [ "$((16#$hex))" -lt 128 ] && [ "$((16#$hex))" -ge 32 ]; then
				printf -v c '%b' "\\x${hex:2:2}"
				out+=$c
			else
				out+='?'
			fi
			raw=${raw:6}
			;;
		*) return 1 ;;
		esac
	done
	JSON_STRING=$out
}

json_skip_value() { # a number, true/false/null, or a nested object/array
	local re='^(-?[0-9][0-9.eE+-]*|true|false|null)' depth=0 c
	if [[ $JSON_REST =~ $re ]]; then
		JSON_REST=${JSON_REST:${#BASH_REMATCH[0]}}
		return 0
	fi
	while [ -n "$JSON_REST" ]; do
		c=${JSON_REST:0:1}
		case "$c" in
		'"')
			json_take_string || return 1
			continue
			;;
		'{' | '[') depth=$((depth + 1)) ;;
		'}' | ']') depth=$((depth - 1)) ;;
		esac
		JSON_REST=${JSON_REST:1}
		[ "$depth" -gt 0 ] || return $((depth == 0 ? 0 : 1))
	done
	return 1
}

json_parse_object() { # TEXT
	local key
	JSON_FIELDS=()
	JSON_REST=$1
	json_skip_ws
	[ "${JSON_REST:0:1}" = '{' ] || return 1
	JSON_REST=${JSON_REST:1}
	json_skip_ws
	if [ "${JSON_REST:0:1}" = '}' ]; then
		JSON_REST=${JSON_REST:1}
	else
		while :; do
			json_skip_ws
			json_take_string || return 1
			key=$JSON_STRING
			json_skip_ws
			[ "${JSON_REST:0:1}" = : ] || return 1
			JSON_REST=${JSON_REST:1}
			json_skip_ws
			if [ "${JSON_REST:0:1}" = '"' ]; then
				json_take_string || return 1
				if [[ $key =~ ^[A-Za-z0-9_]{1,64}$ ]]; then JSON_FIELDS[$key]=$JSON_STRING; fi
			else
				json_skip_value || return 1
			fi
			json_skip_ws
			case "${JSON_REST:0:1}" in
			,) JSON_REST=${JSON_REST:1} ;;
			'}')
				JSON_REST=${JSON_REST:1}
				break
				;;
			*) return 1 ;;
			esac
		done
	fi
	json_skip_ws
	[ -z "$JSON_REST" ]
}

# The message of the service's JSON error ({"error":{"code":..,"message":..}}), for the log.
error_message() { # BODY
	local re='"message"[[:space:]]*:[[:space:]]*"(([^"\\]|\\.)*)"'
	[[ $1 =~ $re ]] && printf '%s' "${BASH_REMATCH[1]:0:200}"
}

# The code of the service's JSON error (PoolNotFound, Forbidden, ...), or nothing.
error_code() { # BODY
	local re='"code"[[:space:]]*:[[:space:]]*"([A-Za-z0-9]{1,64})"'
	[[ $1 =~ $re ]] && printf '%s' "${BASH_REMATCH[1]}"
}

# Outputs of the fetch (ACT_CODE is the secret).
ACT_ID=
ACT_CODE=
ACT_REGION=
ACT_EXPIRES=
ACT_POOL=

# Takes the activation out of a 200 body; dies with exit 3 on anything else.
read_activation() { # BODY
	local size=${#1}
	if [ "$size" -gt 65536 ] || ! json_parse_object "$1"; then
		JSON_FIELDS=()
		JSON_REST=
		xtrace_restore
		die "$EXIT_FETCH" "malformed response from the service (HTTP 200, $size bytes, not an activation JSON object with ActivationId and ActivationCode)"
	fi
	ACT_ID=${JSON_FIELDS[ActivationId]:-}
	ACT_CODE=${JSON_FIELDS[ActivationCode]:-}
	ACT_REGION=${JSON_FIELDS[Region]:-}
	ACT_EXPIRES=${JSON_FIELDS[ExpirationDate]:-}
	ACT_POOL=${JSON_FIELDS[Pool]:-}
	JSON_FIELDS=()
	JSON_STRING=
	if ! [[ $ACT_ID =~ ^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$ ]] ||
		! [[ $ACT_CODE =~ ^[A-Za-z0-9+/=_-]{1,256}$ ]]; then
		ACT_CODE=
		xtrace_restore
		die "$EXIT_FETCH" "malformed response from the service (ActivationId or ActivationCode missing or of an unexpected format)"
	fi
	[[ $ACT_REGION =~ ^[a-z0-9-]{0,32}$ ]] || ACT_REGION=
	[[ $ACT_EXPIRES =~ ^[0-9A-Za-z:.+-]{0,40}$ ]] || ACT_EXPIRES=
	[[ $ACT_POOL =~ ^[A-Za-z0-9_-]{0,64}$ ]] || ACT_POOL=
}

# GET the activation with retries: exponential backoff with jitter on connection
# failures (including TLS errors from a clock not yet synced) and 5xx, the
# server's Retry-After on 503/429, and a hard deadline of --max-wait seconds.
# A 4xx is final: the same request would get the same answer.
fetch_activation() {
	{ xtrace_off; } 2>/dev/null
	local url body resp status rc attempt=0 wait_ms ra remaining per_try last_error='' hdr err msg code pool
	local -a curl_args proxy_args
	url=$(activation_url)
	hdr="$WORK/headers"
	err="$WORK/curl.err"
	mapfile -t proxy_args < <(curl_proxy_args "$URL")
	curl_args=(--silent --show-error --proto '=https,http' --user-agent "$PROG/2"
		-H 'Accept: application/json' --dump-header "$hdr" --write-out '\n%{http_code}' "${proxy_args[@]}")
	[ -z "$API_ID" ] || curl_args+=(-H "x-apigw-api-id: $API_ID")
	[ -z "$MACHINE_ID" ] || curl_args+=(-H "X-Machine-Id: $MACHINE_ID")
	[ -z "$CA_BUNDLE" ] || curl_args+=(--cacert "$CA_BUNDLE")

	log "fetching activation: GET $url${API_ID:+ (x-apigw-api-id: $API_ID)}${MACHINE_ID:+ (X-Machine-Id: ${MACHINE_ID:0:12}...)}${PROXY:+ via proxy $(redact_url "$PROXY")}"
	DEADLINE=$((SECONDS + MAX_WAIT))
	backoff_reset
	while :; do
		remaining=$((DEADLINE - SECONDS))
		if [ "$remaining" -le 0 ]; then
			xtrace_restore
			die "$EXIT_FETCH" "gave up fetching an activation after ${MAX_WAIT}s and $attempt attempt(s) (--max-wait $MAX_WAIT); last error: ${last_error:-none}$(tls_hint "$last_error")"
		fi
		attempt=$((attempt + 1))
		per_try=$((remaining < 30 ? remaining : 30))
		rm -f "$hdr" "$err"
		rc=0
		resp=$(curl "${curl_args[@]}" --connect-timeout "$((per_try < 10 ? per_try : 10))" --max-time "$per_try" "$url" 2>"$err") || rc=$?
		status=${resp##*$'\n'}
		body=${resp%$'\n'*}
		[ "$body" != "$resp" ] || body=
		resp=
		if [ "$rc" = 0 ] && [ "$status" = 200 ]; then break; fi

		ra=
		if [ "$rc" = 0 ] && [[ $status =~ ^[1-9][0-9][0-9]$ ]]; then
			last_error="HTTP $status"
			msg=$(error_message "$body") || msg=
			code=$(error_code "$body") || code=
			body=
			pool=${POOL:-default}
			# The pool's own verdicts are final: asking again gets the same answer.
			case "$status:$code" in
			404:PoolNotFound) xtrace_restore && die "$EXIT_FETCH" "pool '$pool' does not exist (HTTP 404 PoolNotFound${msg:+: $msg}): check --pool; not retried" ;;
			403:PoolDisabled) xtrace_restore && die "$EXIT_FETCH" "pool '$pool' is disabled (HTTP 403 PoolDisabled${msg:+: $msg}); not retried" ;;
			403:Forbidden) xtrace_restore && die "$EXIT_FETCH" "pool '$pool' refuses this server (HTTP 403 Forbidden${msg:+: $msg}): its address is not in the pool's allowed_cidrs; not retried" ;;
			500:PoolMisconfigured) xtrace_restore && die "$EXIT_FETCH" "pool '$pool' is misconfigured (HTTP 500 PoolMisconfigured${msg:+: $msg}): its operator must fix the pool's config; not retried" ;;
			esac
			case "$status" in
			429 | 503)
				ra=$(retry_after_seconds "$hdr")
				last_error+=" (Retry-After: ${ra:-none})"
				;;
			500 | 502 | 504) last_error+="${code:+ $code}" ;;
			400) xtrace_restore && die "$EXIT_FETCH" "the service rejected the request (HTTP 400${msg:+: $msg}): check --pool and --instance; not retried" ;;
			401 | 403) xtrace_restore && die "$EXIT_FETCH" "access denied (HTTP $status${code:+ $code}${msg:+: $msg}): a private API is reachable only through its VPC endpoint (with the endpoint's own DNS name pass --api-id) and, when the stack sets AllowedSourceCidrs, only from those addresses; not retried" ;;
			404) xtrace_restore && die "$EXIT_FETCH" "not found (HTTP 404${code:+ $code}${msg:+: $msg}): unknown pool '$pool' or wrong --url; not retried" ;;
			*) xtrace_restore && die "$EXIT_FETCH" "unexpected answer from the service: HTTP $status${msg:+ ($msg)}" ;;
			esac
		else
			body=
			last_error="curl exit $rc: $(head -c 300 "$err" 2>/dev/null | tr '\n' ' ')"
			case "$rc" in
			1 | 2 | 3 | 27 | 43 | 58 | 59 | 77 | 80 | 83 | 90 | 91)
				xtrace_restore
				die "$EXIT_FETCH" "cannot fetch from $URL: $last_error${CA_BUNDLE:+ (CA bundle $CA_BUNDLE)}; TLS problems: pass --ca-bundle with your CA"
				;;
			esac
		fi

		if [ -n "$ra" ]; then
			# Honour the server, plus up to 1 s of jitter so waiters do not return in lockstep.
			wait_ms=$((ra * 1000 + RANDOM % 1000))
			remaining=$((DEADLINE - SECONDS))
			if [ $((wait_ms / 1000)) -ge "$remaining" ]; then wait_ms=$((remaining > 0 ? remaining * 1000 : 0)); fi
		else
			wait_ms=$(backoff_next_ms)
		fi
		log "attempt $attempt failed ($last_error); retrying in $((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))s"
		sleep_ms "$wait_ms"
	done

	read_activation "$body"
	body=
	xtrace_restore
	log "got activation $ACT_ID (pool ${ACT_POOL:-?}, region ${ACT_REGION:-?}, expires ${ACT_EXPIRES:-?}) after $attempt attempt(s); code $MASK"
}

# curl 35 (TLS handshake) and 60 (certificate not trusted, or not valid yet) are
# retried: at boot the clock may not be synced yet. Say so when giving up.
tls_hint() { # LAST_ERROR
	case "$1" in
	'curl exit 35:'* | 'curl exit 60:'*)
		printf '; TLS: check the clock (now %(%Y-%m-%dT%H:%M:%SZ)T; start after time-sync.target) and the CA (--ca-bundle)' -1
		;;
	esac
}

# ----------------------------------------------------------------- the reports

# After a registration, and after a refusal SSM gave, the script tells the service
# (POST /registrations): a confirmation names and tags the node, a refusal lets the
# service check that activation at once. Either report is a courtesy: whatever goes
# wrong with it is a WARNING and never changes the exit status. The body is built
# from values checked against their fixed alphabets, so nothing needs escaping.
readonly REPORT_WAIT=6 # seconds for the whole report, retries included
readonly HEALABLE_REFUSALS=' InvalidActivation ActivationExpired RegistrationLimitExceeded '
REFUSAL_RETRY=1 # one more vend after a refusal the service can heal
REFUSED=        # set when that refusal happened and the vend is to be asked again

valid_instance_id() { [[ $1 =~ ^mi-[0-9a-f]{17}$ ]]; }
valid_activation_id() { [[ $1 =~ ^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$ ]]; }

confirmation_body() { # INSTANCE_ID
	valid_instance_id "$1" && valid_activation_id "$ACT_ID" || return 1
	local body="{\"InstanceId\": \"$1\", \"ActivationId\": \"$ACT_ID\""
	if [ -n "$INSTANCE" ]; then
		valid_instance_name "$INSTANCE" || return 1
		body+=", \"Instance\": \"$INSTANCE\""
	fi
	printf '%s}' "$body"
}

refusal_body() { # CODE
	valid_activation_id "$ACT_ID" && [[ $1 =~ ^[A-Za-z]{1,64}$ ]] || return 1
	printf '{"ActivationId": "%s", "Error": "%s"}' "$ACT_ID" "$1"
}

# POSTs BODY to /registrations within REPORT_WAIT seconds: 429/503 follow Retry-After,
# a connection failure is tried again after a second, anything else is the answer.
# Sets REPORT_STATUS (the HTTP status, or "curl exit N") and REPORT_ANSWER (the body,
# at most 64 KiB); returns 0 on 200.
REPORT_STATUS=
REPORT_ANSWER=
post_registration() { # BODY
	local url resp rc ra pause remaining deadline=$((SECONDS + REPORT_WAIT)) hdr="$WORK/report.headers"
	local -a curl_args proxy_args
	url=$(registrations_url)
	mapfile -t proxy_args < <(curl_proxy_args "$URL")
	curl_args=(--silent --show-error --proto '=https,http' --user-agent "$PROG/2" -X POST
		-H 'Accept: application/json' -H 'Content-Type: application/json' --data-binary "$1"
		--dump-header "$hdr" --write-out '\n%{http_code}' "${proxy_args[@]}")
	[ -z "$API_ID" ] || curl_args+=(-H "x-apigw-api-id: $API_ID")
	[ -z "$MACHINE_ID" ] || curl_args+=(-H "X-Machine-Id: $MACHINE_ID")
	[ -z "$CA_BUNDLE" ] || curl_args+=(--cacert "$CA_BUNDLE")
	while :; do
		remaining=$((deadline - SECONDS))
		[ "$remaining" -gt 0 ] || return 1
		rm -f "$hdr"
		rc=0
		resp=$(curl "${curl_args[@]}" --connect-timeout "$((remaining < 3 ? remaining : 3))" --max-time "$remaining" "$url" 2>/dev/null) || rc=$?
		REPORT_ANSWER=${resp%$'\n'*}
		[ "$REPORT_ANSWER" != "$resp" ] || REPORT_ANSWER=
		REPORT_ANSWER=${REPORT_ANSWER:0:65536}
		REPORT_STATUS=${resp##*$'\n'}
		if [ "$rc" != 0 ]; then
			REPORT_STATUS="curl exit $rc"
			pause=1
		else
			case "$REPORT_STATUS" in
			200) return 0 ;;
			429 | 503)
				ra=$(retry_after_seconds "$hdr")
				pause=${ra:-1}
				;;
			*) return 1 ;;
			esac
		fi
		remaining=$((deadline - SECONDS))
		[ "$pause" -lt "$remaining" ] || return 1
		log "reporting to the service: $REPORT_STATUS; trying again in ${pause}s"
		sleep "$pause"
	done
}

# "HTTP 403 NotConfirmable: message" for the log.
report_failure() {
	local code msg
	case "$REPORT_STATUS" in
	'curl exit'*) printf '%s' "$REPORT_STATUS" ;;
	*)
		code=$(error_code "$REPORT_ANSWER") || code=
		msg=$(error_message "$REPORT_ANSWER") || msg=
		printf 'HTTP %s%s%s' "${REPORT_STATUS:-?}" "${code:+ $code}" "${msg:+: $msg}"
		;;
	esac
}

# The managed instance IDs in the answer's "Replaced" list, comma-separated.
replaced_nodes() { # ANSWER
	local re='"Replaced"[[:space:]]*:[[:space:]]*\[([^]]*)\]' list out='' id_re='mi-[0-9a-f]{17}'
	[[ $1 =~ $re ]] || return 0
	list=${BASH_REMATCH[1]}
	while [[ $list =~ $id_re ]]; do
		out+="${out:+, }${BASH_REMATCH[0]}"
		list=${list#*"${BASH_REMATCH[0]}"}
	done
	printf '%s' "$out"
}

# The Name tag in the answer's "Tags" (an object of keys, or a list of Key/Value pairs).
name_tag() { # ANSWER
	local re='"Name"[[:space:]]*:[[:space:]]*"([A-Za-z0-9_.-]{1,253})"'
	local list_re='"Key"[[:space:]]*:[[:space:]]*"Name"[[:space:]]*,[[:space:]]*"Value"[[:space:]]*:[[:space:]]*"([A-Za-z0-9_.-]{1,253})"'
	if [[ $1 =~ $list_re ]] || [[ $1 =~ $re ]]; then printf '%s' "${BASH_REMATCH[1]}"; fi
}

# Confirms this registration with the service, which tags the node (Name = the
# instance name) and may deregister this machine's older offline nodes.
report_registration() { # INSTANCE_ID
	local body replaced name
	if ! body=$(confirmation_body "$1"); then
		log "WARNING: not confirming the registration: the managed instance ID '$1' or activation ID is not of the expected form"
		return 0
	fi
	log "confirming the registration: POST $(registrations_url) (InstanceId $1, ActivationId $ACT_ID${INSTANCE:+, Instance $INSTANCE})"
	if ! post_registration "$body"; then
		log "WARNING: the service did not confirm the registration ($(report_failure)); this server is registered all the same (no Name tag from the service)"
		return 0
	fi
	replaced=$(replaced_nodes "$REPORT_ANSWER")
	name=$(name_tag "$REPORT_ANSWER")
	printf 'confirmed: %s (Name=%s; replaced: %s)\n' "$1" "${name:-none}" "${replaced:-none}"
}

# Tells the service that SSM refused its activation; it checks that with SSM and
# retires the activation if SSM agrees.
report_refusal() { # CODE
	local body confirmed re='"Confirmed"[[:space:]]*:[[:space:]]*(true|false)'
	body=$(refusal_body "$1") || return 0
	log "reporting the refusal: POST $(registrations_url) (ActivationId $ACT_ID, Error $1)"
	if ! post_registration "$body"; then
		log "WARNING: the service did not take the refusal report ($(report_failure))"
		return 0
	fi
	confirmed=unknown
	if [[ $REPORT_ANSWER =~ $re ]]; then confirmed=${BASH_REMATCH[1]}; fi
	log "the service checked activation $ACT_ID with SSM: Confirmed $confirmed$([ "$confirmed" != true ] || printf ' (retired)')"
}

healable_refusal() { [[ $HEALABLE_REFUSALS == *" $1 "* ]]; }

# ------------------------------------------------------------------- install

download_base() {
	if [ -n "$DOWNLOAD_BASE" ]; then
		printf '%s' "${DOWNLOAD_BASE%/}"
		return
	fi
	local suffix=amazonaws.com
	case "$REGION" in cn-*) suffix=amazonaws.com.cn ;; esac
	printf 'https://amazon-ssm-%s.s3.%s.%s' "$REGION" "$REGION" "$suffix"
}

# URL DEST: https (or a file:// mirror) only. Retried with backoff until
# --max-wait, unless the file is not there (returns 2 then; 1 when giving up).
download() {
	local url=$1 dest=$2 attempt=0 rc code wait_ms
	local -a proxy_args
	mapfile -t proxy_args < <(curl_proxy_args "$url")
	DEADLINE=$((SECONDS + MAX_WAIT))
	backoff_reset
	while :; do
		attempt=$((attempt + 1))
		rc=0
		code=$(curl --silent --show-error --fail --location --proto '=https,file' --proto-redir '=https' \
			"${proxy_args[@]}" --connect-timeout 15 --max-time 600 --write-out '%{http_code}' \
			-o "$dest" "$url" 2>"$WORK/download.err") || rc=$?
		if [ "$rc" = 0 ] && [ -s "$dest" ]; then return 0; fi
		rm -f "$dest"
		# Not there (S3 answers 403 for a missing key, a mirror 404 or "no such file"): no retry.
		case "$code:$rc" in 403:* | 404:* | *:37) return 2 ;; esac
		mask_stream <"$WORK/download.err"
		[ "$SECONDS" -lt "$DEADLINE" ] || return 1
		wait_ms=$(backoff_next_ms)
		log "download of $url failed (attempt $attempt); retrying in $((wait_ms / 1000))s"
		sleep_ms "$wait_ms"
	done
}

# ------------------------------------------------------ signature verification

GPG=
find_gpg() {
	GPG=$(command -v gpg 2>/dev/null || command -v gpg2 2>/dev/null || true)
	[ -n "$GPG" ]
}

signing_key_file() {
	if [ -n "$SIGNING_KEY" ]; then
		printf '%s' "$SIGNING_KEY"
	elif [ -r "$ROOT$DEFAULT_SIGNING_KEY" ]; then
		printf '%s' "$ROOT$DEFAULT_SIGNING_KEY"
	fi
}

# What stands in the way of checking a signature, or nothing (after find_gpg).
verification_blocker() {
	if [ -z "$GPG" ]; then
		printf 'gpg is not installed (install it: %s)' "$(pkg_install_cmd "$([ "$FAMILY" = deb ] && echo gpg || echo gnupg2)")"
	elif [ -z "$(signing_key_file)" ]; then
		printf "no SSM Agent signing key: put AWS's current public key (\"Verifying the signature of SSM Agent\" in the Systems Manager user guide) at %s or pass --signing-key" "$DEFAULT_SIGNING_KEY"
	fi
}

unverified_or_die() { # WHAT REASON: allowed only with --allow-unverified
	if [ "$ALLOW_UNVERIFIED" = 1 ]; then
		log "WARNING: running $1 UNVERIFIED (--allow-unverified): $2"
		return 0
	fi
	die "$EXIT_INSTALL" "cannot verify $1: $2; refusing to run it (--allow-unverified accepts the risk)"
}

# FILE URL: downloads URL.sig and checks FILE against AWS's key with gpg. A
# signature that does not match is fatal even with --allow-unverified; one that
# cannot be checked (no gpg, no key, no .sig) is fatal without it.
verify_download() {
	local file=$1 url=$2 what blocker rc=0 home status
	what=$(basename "$file")
	find_gpg || true
	blocker=$(verification_blocker)
	if [ -n "$blocker" ]; then
		unverified_or_die "$what" "$blocker"
		return 0
	fi
	download "$url.sig" "$file.sig" || rc=$?
	if [ "$rc" != 0 ]; then
		unverified_or_die "$what" "no signature at $url.sig"
		return 0
	fi
	home="$WORK/gnupg"
	mkdir -p "$home"
	if ! "$GPG" --homedir "$home" --batch --quiet --import "$(signing_key_file)" </dev/null >/dev/null 2>"$WORK/gpg.err"; then
		mask_stream <"$WORK/gpg.err"
		die "$EXIT_INSTALL" "could not read the signing key $(signing_key_file)"
	fi
	status=$("$GPG" --homedir "$home" --batch --status-fd 1 --verify "$file.sig" "$file" </dev/null 2>"$WORK/gpg.err") || rc=$?
	if [ "$rc" = 0 ] && [[ $status == *'[GNUPG:] VALIDSIG '* ]]; then
		log "verified $what against $(signing_key_file)"
		return 0
	fi
	mask_stream <"$WORK/gpg.err"
	rm -f -- "$file"
	die "$EXIT_INSTALL" "$what from $url does NOT match its signature (or is signed by a key other than $(signing_key_file)); not running it"
}

# ------------------------------------------------------------- registration

SETUP_CLI=
AGENT_VIA=
OVERRIDE=0
SKIP_SIGNATURE=0
# `amazon-ssm-agent -register` retries a network error with backoff and waits on an
# endpoint that never answers (the real agent: connection refused fails in ~9 s, a
# silent endpoint holds it);
# ssm-setup-cli gives it 60 s (agent/setupcli/managers/registermanager/registerManager.go:93).
REGISTER_TIMEOUT=${BOOTSTRAP_REGISTER_TIMEOUT:-60}
REGISTER_OUT=

# ssm-setup-cli downloads the agent, verifies its signature with gpg (we pass
# -skip-signature-validation only with --allow-unverified on a host without gpg, where
# it cannot verify and would refuse), installs, registers and starts it.
register_with_setup_cli() {
	{ xtrace_off; } 2>/dev/null
	local rc=0
	local -a args
	# The code is passed as a flag because ssm-setup-cli has no other way to take it.
	args=(-register "-activation-code=$ACT_CODE" "-activation-id=$ACT_ID" "-region=$REGION")
	[ "$OVERRIDE" = 0 ] || args+=(-override)
	[ "$SKIP_SIGNATURE" = 0 ] || args+=(-skip-signature-validation)
	[ -z "$MANIFEST_URL" ] || args+=("-manifest-url=$MANIFEST_URL")
	log "running: ssm-setup-cli -register -activation-code=$MASK -activation-id=$ACT_ID -region=$REGION${MANIFEST_URL:+ -manifest-url=$MANIFEST_URL}$([ "$OVERRIDE" = 0 ] || printf ' -override')$([ "$SKIP_SIGNATURE" = 0 ] || printf ' -skip-signature-validation')"
	# It starts the agent itself: not with this script's lock (fd 9).
	with_timeout 900 "$SETUP_CLI" "${args[@]}" </dev/null 9>&- 2>&1 | mask_stream "$REGISTER_OUT" || rc=$?
	args=()
	xtrace_restore
	return "$rc"
}

# The installed agent registers itself: `amazon-ssm-agent -register ... -y`
# (-y answers the "already registered, override?" prompt, so nothing waits on stdin),
# given REGISTER_TIMEOUT seconds as ssm-setup-cli gives it. Returns its status (124:
# timed out).
register_with_agent() {
	stop_service
	{ xtrace_off; } 2>/dev/null
	local rc=0
	log "running: $AGENT_BIN -register -code=$MASK -id=$ACT_ID -region=$REGION -y (within ${REGISTER_TIMEOUT}s)"
	# The code is passed as a flag because the agent has no other way to take it.
	with_timeout "$REGISTER_TIMEOUT" "$AGENT_BIN" -register "-code=$ACT_CODE" "-id=$ACT_ID" "-region=$REGION" -y </dev/null 2>&1 | mask_stream "$REGISTER_OUT" || rc=$?
	xtrace_restore
	return "$rc"
}

# The code of SSM's refusal in the agent's output ("Registration failed due to error
# registering the instance with AWS SSM. InvalidActivation: ..."), or nothing (a network
# error is no refusal).
refusal_code() {
	local line re='Registration failed due to .*AWS SSM\. ([A-Za-z][A-Za-z0-9]*): '
	[ -f "$REGISTER_OUT" ] || return 0
	while IFS= read -r line || [ -n "$line" ]; do
		[[ $line =~ $re ]] || continue
		case "${BASH_REMATCH[1]}" in
		RequestError | RequestCanceled | SerializationError) ;;
		*)
			printf '%s' "${BASH_REMATCH[1]}"
			return 0
			;;
		esac
	done <"$REGISTER_OUT"
}

# A registration that failed, first or re-: the agent blanked its own identity before
# it asked SSM, so this machine is unregistered whatever the registration file says.
# Removes that stale file (and our record), says so, prints "refused: <Code>" when SSM
# refused, exits 5. The next run registers afresh.
# The first refusal the service can heal (HEALABLE_REFUSALS) is not final: it sets
# REFUSED and returns 0, and main reports it and asks for an activation once more.
registration_failed() { # STATUS WHAT
	local code
	code=$(refusal_code)
	rm -f -- "$REG_FILE" "$IDENTITY_FILE"
	log "this machine is now UNREGISTERED: the agent clears its own identity before it asks SSM; removed $REG_FILE, the next run registers afresh"
	if [ -n "$code" ] && [ "$REFUSAL_RETRY" = 1 ] && healable_refusal "$code"; then
		REFUSAL_RETRY=0
		REFUSED=$code
		log "SSM refused activation $ACT_ID ($code): $2 could not register this server; reporting it and asking for an activation once more"
		return 0
	fi
	if [ -n "$code" ]; then
		printf 'refused: %s\n' "$code"
		die "$EXIT_REGISTER" "SSM refused activation $ACT_ID ($code): $2 could not register this server"
	fi
	if [ "$1" = 124 ]; then
		die "$EXIT_REGISTER" "$2 did not finish registering within ${REGISTER_TIMEOUT}s: no route to SSM? (proxy: --proxy; network: HTTPS to ssm.$REGION.amazonaws.com)"
	fi
	if grep -q 'AWS SSM\. RequestError: ' "$REGISTER_OUT" 2>/dev/null; then
		die "$EXIT_REGISTER" "$2 could not reach SSM (RequestError, see its output above): no route to SSM? (proxy: --proxy; network: HTTPS to ssm.$REGION.amazonaws.com)"
	fi
	die "$EXIT_REGISTER" "$2 could not register this server with activation $ACT_ID (see its output above)"
}

# Fallback: the agent package from the same regional bucket, verified, installed
# with the distribution's package manager.
install_agent_package() {
	local ext file url rc=0
	case "$FAMILY" in deb) ext=deb ;; *) ext=rpm ;; esac
	url="$(download_base)/latest/$BUCKET_DIR/amazon-ssm-agent.$ext"
	file="$WORK/amazon-ssm-agent.$ext"
	log "installing the agent package from $url with $PKG"
	download "$url" "$file" || rc=$?
	[ "$rc" = 0 ] || die "$EXIT_INSTALL" "could not download $url"
	verify_download "$file" "$url"
	chmod 0644 "$file"
	pkg_install "$file" || die "$EXIT_INSTALL" "could not install the agent package: $(pkg_install_cmd "$file") failed"
	detect_agent
	[ -n "$AGENT_BIN" ] || die "$EXIT_INSTALL" "amazon-ssm-agent is not on PATH after installing the package"
}

# ssm-setup-cli picks its download folder from os-release ({platform}_{arch},
# agent/updateutil/updateinfo/updateinfo.go:119) and the bucket has none for Fedora or
# openSUSE: there it fails its own checksum before installing anything.
setup_cli_unusable_here() {
	case "$DISTRO_ID" in fedora | opensuse*) return 0 ;; *) return 1 ;; esac
}

# Returns 0 registered (or refused with REFUSED set), 1 when ssm-setup-cli failed
# before installing the agent (the caller falls back to the package), exits 5 when it
# could not register.
try_setup_cli() {
	local url rc=0
	url="$(download_base)/latest/$BUCKET_DIR/ssm-setup-cli"
	SETUP_CLI="$WORK/ssm-setup-cli"
	log "downloading ssm-setup-cli from $url"
	download "$url" "$SETUP_CLI" || rc=$?
	case "$rc" in
	0) ;;
	2)
		log "ssm-setup-cli is not available; falling back to the $PKG package"
		return 1
		;;
	*) die "$EXIT_INSTALL" "could not download $url within --max-wait $MAX_WAIT" ;;
	esac
	verify_download "$SETUP_CLI" "$url"
	chmod 0700 "$SETUP_CLI"
	if [ "$ALLOW_UNVERIFIED" = 1 ] && ! find_gpg; then
		# ssm-setup-cli verifies the agent package by running gpg itself and refuses
		# without it (verificationmanagers/linuxmanager.go:59-62) unless told to skip.
		log "WARNING: no gpg, so ssm-setup-cli cannot verify the agent package either: passing -skip-signature-validation (--allow-unverified)"
		SKIP_SIGNATURE=1
	fi
	rc=0
	register_with_setup_cli || rc=$?
	detect_agent
	if [ "$rc" = 0 ]; then
		AGENT_VIA=ssm-setup-cli
		return 0
	fi
	if [ -n "$AGENT_BIN" ]; then
		registration_failed "$rc" "ssm-setup-cli"
		return 0 # refused, to be asked once more (REFUSED): the agent is installed now
	fi
	log "ssm-setup-cli failed before the agent was installed; falling back to the $PKG package"
	return 1
}

register_installed_agent() {
	local rc=0
	register_with_agent || rc=$?
	[ "$rc" = 0 ] || registration_failed "$rc" "$SERVICE -register"
}

# Registers with the fetched activation; returns with REFUSED set when SSM refused it
# in a way the service can heal (the first time only).
install_and_register() {
	REGISTER_OUT="$WORK/register.out"
	: >"$REGISTER_OUT"
	detect_agent
	if [ -n "$AGENT_BIN" ]; then
		# Amazon Linux, the Ubuntu snap, images with the agent: register it directly
		# rather than have ssm-setup-cli reinstall (and self-update) it.
		log "the agent is installed ($AGENT_BIN, unit $SERVICE); registering it directly"
		register_installed_agent
		AGENT_VIA="installed agent"
		return 0
	fi
	if setup_cli_unusable_here; then
		log "not using ssm-setup-cli on ${DISTRO_NAME:-$DISTRO_ID}: it picks its download folder from os-release, the bucket has none for '$DISTRO_ID' and it fails its own checksum there; using the $PKG package"
	elif try_setup_cli; then
		return 0
	fi
	install_agent_package
	register_installed_agent
	AGENT_VIA="$PKG package"
}

# --------------------------------------------------------------- online check

log_size() { [ -f "$AGENT_LOG" ] && wc -c <"$AGENT_LOG" || printf '0'; }

# The agent's log since it was (re)started at byte offset $1 (from 0 after rotation).
agent_log_since() { # OFFSET
	[ -f "$AGENT_LOG" ] || return 0
	local size
	size=$(wc -c <"$AGENT_LOG")
	if [ "$size" -lt "$1" ]; then cat -- "$AGENT_LOG"; else tail -c "+$(($1 + 1))" -- "$AGENT_LOG"; fi
}

# The agent is online when the core agent's own log since this start says it got
# credentials from SSM ("[CredentialRefresher] Credentials ready"), which needs a
# registration SSM accepts and a route to SSM (proxy). ssm-cli cannot tell: it reads
# the local identity only. (Matched in bash, not with grep -q in a pipe: pipefail
# would turn the writer's SIGPIPE into a miss on a long log.)
agent_reports_online() { # LOG_SINCE_START
	[[ $1 == *'Credentials ready'* ]]
}

# The core's last "Retrieve credentials produced error" line since this start: SSM
# refused the node (AccessDeniedException: deregistered) or there is no route to SSM.
agent_credential_error() { # LOG_SINCE_START -> prints the line
	local rest=$1 last='' re='[^'$'\n'']*Retrieve credentials produced error[^'$'\n'']*'
	while [[ $rest =~ $re ]]; do
		last=${BASH_REMATCH[0]}
		rest=${rest#*"$last"}
	done
	[ -n "$last" ] || return 1
	redact_line "$last"
}

# The worker's hibernation line (it starts only once credentials are ready).
agent_hibernating() { # LOG_SINCE_START -> prints the agent's hibernation line
	local re='[^'$'\n'']*Entering SSM Agent hibernate[^'$'\n'']*'
	[[ $1 =~ $re ]] || return 1
	redact_line "${BASH_REMATCH[0]}"
}

# Waits up to --online-wait for: the agent's identity and the registration file
# agreeing, the service running, and the core agent's "Credentials ready". Dies with
# exit 5 and the reason.
INSTANCE_ID=
wait_until_online() { # LOG_OFFSET
	local offset=$1 deadline=$((SECONDS + ONLINE_WAIT)) reason line since
	while :; do
		since=$(agent_log_since "$offset")
		if [[ $since == *'failed to find agent identity'* ]]; then
			rm -f -- "$REG_FILE" "$IDENTITY_FILE"
			die "$EXIT_REGISTER" "the agent has no identity ('failed to find agent identity' in $AGENT_LOG): this machine is UNREGISTERED; removed $REG_FILE, the next run registers afresh"
		elif ! INSTANCE_ID=$(registered_instance_id); then
			reason="not registered: the agent's own identity and $REG_FILE do not name the same managed instance"
		elif ! service_active; then
			reason="registered as $INSTANCE_ID but $SERVICE is not running"
		elif line=$(agent_hibernating "$since"); then
			die "$EXIT_REGISTER" "registered as $INSTANCE_ID but the agent cannot reach Systems Manager and hibernates: ${line:0:300} (proxy: --proxy; network: HTTPS to ssm, ssmmessages, ec2messages in $REGION)"
		elif agent_reports_online "$since"; then
			return 0
		elif line=$(agent_credential_error "$since"); then
			reason="registered as $INSTANCE_ID but the agent cannot get credentials from Systems Manager: ${line:0:300} (no route to SSM? proxy: --proxy; network: HTTPS to ssm, ssmmessages, ec2messages in $REGION)"
		else
			reason="registered as $INSTANCE_ID and $SERVICE is running, but the agent has not reported connecting to Systems Manager (no 'Credentials ready' in $AGENT_LOG)"
		fi
		[ "$SECONDS" -lt "$deadline" ] || die "$EXIT_REGISTER" "not online after --online-wait ${ONLINE_WAIT}s: $reason"
		sleep 1
	done
}

# ---------------------------------------------------------------------- main

acquire_lock() {
	[ "$DRY_RUN" = 0 ] && command -v flock >/dev/null 2>&1 || return 0
	local lockdir="$ROOT/run"
	[ -d "$lockdir" ] || lockdir="$ROOT/tmp"
	[ -d "$lockdir" ] || return 0
	exec 9>"$lockdir/ssm-bootstrap.lock"
	flock -w "$((MAX_WAIT + 900))" 9 || die "$EXIT_INSTALL" "another bootstrap is still running"
}

# A registered server exits early, unless it is not the machine it was registered
# on (a clone of a registered image, a re-image): then the old registration is
# cleared. Returns 0 to go on registering.
check_existing_registration() {
	local existing recorded file_id agent_id
	file_id=$(registration_file_id) || file_id=
	agent_id=$(agent_identity) || agent_id=
	[ -n "$file_id" ] || [ -n "$agent_id" ] || return 0
	if [ "$file_id" != "$agent_id" ]; then
		not_registered "$file_id" "$agent_id"
		return 0
	fi
	existing=$file_id
	if [ "$FORCE" = 1 ]; then
		log "registered as $existing; --force given, registering again"
		OVERRIDE=1
		return 0
	fi
	recorded=$(recorded_value machine) || recorded=
	if [ -n "$MACHINE_ID" ] && [ -n "$recorded" ] && [ "$recorded" != "$MACHINE_ID" ]; then
		log "registered as $existing, but on another machine (machine id ${recorded:0:12}..., this is ${MACHINE_ID:0:12}...): a clone or a re-image; clearing that registration and registering afresh"
		OVERRIDE=1
		if [ "$DRY_RUN" = 1 ]; then
			plan "stop $SERVICE; ${AGENT_BIN:-amazon-ssm-agent} -register -clear; remove $REG_FILE"
		else
			clear_registration
		fi
		return 0
	fi
	if [ -z "$recorded" ] && [ "$DRY_RUN" = 0 ]; then
		# Registered before this script kept a record (or by hand): adopt it.
		record_machine "$existing" 1
	fi
	if [ "$(recorded_value online || true)" = 0 ] && [ "$DRY_RUN" = 0 ]; then
		confirm_online_after_restart "registered as $existing, but the agent was not seen online yet"
	fi
	log "already registered as $existing; nothing to do (--force re-registers)"
	if [ "$DRY_RUN" = 0 ] && ! service_active 2>/dev/null; then
		log "$SERVICE is not running; starting it"
		write_proxy_dropin || true
		enable_and_start_service || log "warning: could not start $SERVICE"
	fi
	printf 'already registered: %s\n' "$existing"
	exit "$EXIT_OK"
}

# The registration file and the agent's own identity disagree: a registration that
# failed (the agent blanks its identity before asking SSM and leaves the file), a
# -register -clear, or a file removed by hand. The machine is not registered: the stale
# file goes and it registers afresh.
not_registered() { # FILE_ID AGENT_ID
	log "not registered: $REG_FILE names ${1:-no managed instance} but the agent's own identity is ${2:-empty} (a failed registration or -register -clear blanks it); registering afresh"
	OVERRIDE=1
	if [ "$DRY_RUN" = 1 ]; then
		plan "remove the stale $REG_FILE and $IDENTITY_FILE"
	else
		rm -f -- "$REG_FILE" "$IDENTITY_FILE"
	fi
}

# A registration made by an earlier run that gave up waiting for the agent: start
# the agent again and wait for it (no new activation), exit 0 or 5.
confirm_online_after_restart() { # WHY
	local offset
	log "$1; starting $SERVICE and waiting up to ${ONLINE_WAIT}s"
	write_proxy_dropin || true
	offset=$(log_size)
	enable_and_start_service || die "$EXIT_REGISTER" "could not enable and start $SERVICE"
	wait_until_online "$offset"
	record_machine "$INSTANCE_ID" 1
	log "registered as $INSTANCE_ID; $SERVICE is enabled, running and connected"
	printf 'registered: %s\n' "$INSTANCE_ID"
	exit "$EXIT_OK"
}

print_plan() {
	local id=${ACT_ID:-<activation-id>} region=${REGION:-<region>} ext=rpm override=''
	[ "$FAMILY" != deb ] || ext=deb
	[ "$OVERRIDE" = 0 ] || override=' -override'
	REGION=$region
	plan "activation $id for instance '${INSTANCE:-(none)}' (pool ${ACT_POOL:-${POOL:-default}}, region $region, expires ${ACT_EXPIRES:-?}); code $MASK"
	if [ -n "$AGENT_BIN" ]; then
		plan "the agent is installed ($AGENT_BIN): run $AGENT_BIN -register -code=$MASK -id=$id -region=$region -y (within ${REGISTER_TIMEOUT}s)"
	elif setup_cli_unusable_here; then
		plan "no ssm-setup-cli on $DISTRO_ID (it picks its download folder from os-release and fails its own checksum here): verify and $(pkg_install_cmd "amazon-ssm-agent.$ext") from $(download_base)/latest/$BUCKET_DIR/, then amazon-ssm-agent -register -code=$MASK -id=$id -region=$region -y"
	else
		plan "download $(download_base)/latest/$BUCKET_DIR/ssm-setup-cli and .sig to a private temporary directory; verify with gpg against ${SIGNING_KEY:-$DEFAULT_SIGNING_KEY}$([ "$ALLOW_UNVERIFIED" = 0 ] || printf ' (or run unverified: --allow-unverified)')"
		plan "run: ssm-setup-cli -register -activation-code=$MASK -activation-id=$id -region=$region${MANIFEST_URL:+ -manifest-url=$MANIFEST_URL}$override"
		plan "if ssm-setup-cli is unavailable: verify and $(pkg_install_cmd "amazon-ssm-agent.$ext") from $(download_base)/latest/$BUCKET_DIR/, then amazon-ssm-agent -register -code=$MASK -id=$id -region=$region -y"
	fi
	[ -z "$PROXY" ] || plan "write $(proxy_dropin_path): https_proxy/http_proxy=$(redact_url "$PROXY"), no_proxy=$(agent_no_proxy)"
	plan "systemctl enable $SERVICE && systemctl restart $SERVICE"
	plan "wait up to ${ONLINE_WAIT}s until the agent's own identity and $REG_FILE name the same managed instance (mi-...), $SERVICE is active and $AGENT_LOG says 'Credentials ready' since this start"
	plan "record the machine id digest in $IDENTITY_FILE"
}

main() {
	parse_args "$@"
	validate_inputs
	REG_FILE="$ROOT/var/lib/amazon/ssm/registration"
	IDENTITY_FILE="$ROOT/var/lib/amazon/ssm/activation-vending.machine"
	AGENT_LOG="$ROOT/var/log/amazon/ssm/amazon-ssm-agent.log"
	VAULT_IDENTITY="$ROOT/var/lib/amazon/ssm/Vault/Store/RegistrationKey"

	if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
		die "$EXIT_PLATFORM" "must run as root (it installs and registers the SSM Agent); try sudo, or --dry-run"
	fi
	# One bootstrap at a time on this host.
	acquire_lock
	[ "$PREPARE_IMAGE" = 0 ] || prepare_image

	if [ -n "$PROXY" ]; then
		# For every tool run from here (package managers, ssm-setup-cli's own downloads).
		local bypass
		bypass="127.0.0.1,localhost,::1,$(agent_no_proxy)"
		export https_proxy=$PROXY http_proxy=$PROXY HTTPS_PROXY=$PROXY HTTP_PROXY=$PROXY no_proxy=$bypass NO_PROXY=$bypass
	fi
	MACHINE_ID=$(machine_id_digest)
	[ "$FORCE" = 0 ] || OVERRIDE=1
	detect_agent
	check_existing_registration

	detect_platform
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	# ssm-setup-cli runs from here and keeps its artifacts beside itself, so this
	# must allow exec: /var/lib rather than /tmp, which hardened hosts mount noexec.
	WORK=$(mktemp -d "${TMPDIR:-$ROOT/var/lib}/ssm-bootstrap.XXXXXX")

	ensure_curl
	fetch_activation

	if [ -z "$REGION" ]; then REGION=$ACT_REGION; fi
	[ -n "$REGION" ] || die "$EXIT_FETCH" "the service returned no Region; pass --region"
	valid_region "$REGION" || die "$EXIT_FETCH" "the service returned an invalid Region '$REGION'; pass --region"

	if [ "$DRY_RUN" = 1 ]; then
		print_plan
		ACT_CODE=
		printf 'dry run complete: nothing was changed\n'
		exit "$EXIT_OK"
	fi

	install_and_register
	if [ -n "$REFUSED" ]; then
		# The service checks the refusal with SSM and, if SSM agrees, retires that
		# activation: the next vend is a good one. Asked once; a second refusal is exit 5.
		report_refusal "$REFUSED"
		REFUSED=
		fetch_activation
		install_and_register
	fi
	{ xtrace_off; } 2>/dev/null
	ACT_CODE=
	xtrace_restore

	write_proxy_dropin || true
	local offset
	offset=$(log_size)
	# Recorded before the wait: if the agent is not seen online now, the next run
	# checks again instead of taking this registration for a working one.
	if INSTANCE_ID=$(registered_instance_id); then
		record_machine "$INSTANCE_ID" 0
		report_registration "$INSTANCE_ID"
	fi
	enable_and_start_service || die "$EXIT_REGISTER" "could not enable and start $SERVICE"
	wait_until_online "$offset"
	record_machine "$INSTANCE_ID" 1
	log "registered as $INSTANCE_ID in $REGION via $AGENT_VIA (activation $ACT_ID); $SERVICE is enabled, running and connected"
	printf 'registered: %s\n' "$INSTANCE_ID"
}

main "$@"
