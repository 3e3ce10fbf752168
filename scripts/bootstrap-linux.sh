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
# Supported: Amazon Linux 2/2023, RHEL, CentOS, Fedora, Rocky, Alma, Oracle
# Linux, Debian, Ubuntu, SLES/openSUSE; x86_64 and aarch64; bash >= 4.2.
set -euo pipefail
umask 077

readonly PROG=bootstrap-linux
readonly EXIT_OK=0 EXIT_USAGE=2 EXIT_FETCH=3 EXIT_INSTALL=4 EXIT_REGISTER=5 EXIT_PLATFORM=6
readonly MASK='********'
readonly SERVICE=amazon-ssm-agent

usage() {
	cat <<'EOF'
Usage: bootstrap-linux.sh --url URL [options]

Fetches an SSM hybrid activation from the activation-vending service, installs
the SSM Agent with ssm-setup-cli from the regional AWS download location (the
distribution's package manager is the fallback), registers this server, starts
and enables the agent, and checks that the agent reports registered.

Options (each has an environment variable twin; the flag wins):
  --url URL            VENDING_URL        Service base URL (required). https://, or
                                          http:// to a loopback address for local tests.
  --pool NAME          VENDING_POOL       Activation pool (default: the service's "default").
  --instance NAME      VENDING_INSTANCE   Name this server registers under; also makes
                                          retries reuse the same activation
                                          (default: the host name).
  --region REGION      VENDING_REGION     Override the region the service returns.
  --api-id ID          VENDING_API_ID     Send "x-apigw-api-id: ID", needed when --url is a
                                          VPC endpoint's own DNS name
                                          (https://vpce-....execute-api.REGION.vpce.amazonaws.com/STAGE).
  --ca-bundle FILE     VENDING_CA_BUNDLE  PEM bundle to verify the service's certificate.
  --max-wait SECONDS   VENDING_MAX_WAIT   Give up fetching after this long (default 120).
  --force              VENDING_FORCE=1    Re-register even if this server is registered.
  --dry-run            VENDING_DRY_RUN=1  Fetch an activation to prove connectivity, print
                                          every step with the code masked, change nothing.
  -h, --help                              Show this help.

Advanced (environment only):
  BOOTSTRAP_DOWNLOAD_BASE  Mirror of the regional bucket (https:// or file://) laid out
                           as .../latest/{linux,debian}_{amd64,arm64}/...
                           (default https://amazon-ssm-REGION.s3.REGION.amazonaws.com).
  BOOTSTRAP_MANIFEST_URL   Passed to ssm-setup-cli as -manifest-url.
  BOOTSTRAP_ROOT           Prefix for system paths (/etc/os-release, /var/lib/amazon/ssm,
                           /run); for tests only. Skips the root check.

Exit codes:
  0  registered (or already registered and --force not given; or dry run done)
  1  unexpected internal error
  2  usage error (unknown flag, missing --url, invalid value)
  3  fetch failed (service unreachable, gave up after --max-wait, HTTP error,
     malformed response)
  4  install failed (jq/curl, ssm-setup-cli download, agent package)
  5  registration failed (SSM refused the activation, agent not registered
     afterwards, agent service not running)
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

# Copies stdin to stderr with the activation code masked.
mask_stream() {
	local line
	while IFS= read -r line || [ -n "$line" ]; do
		if [ -n "${ACT_CODE:-}" ]; then line=${line//"$ACT_CODE"/$MASK}; fi
		printf '    | %s\n' "$line" >&2
	done
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
MAX_WAIT=${VENDING_MAX_WAIT:-120}
FORCE=0
DRY_RUN=0
if truthy "${VENDING_FORCE:-}"; then FORCE=1; fi
if truthy "${VENDING_DRY_RUN:-}"; then DRY_RUN=1; fi
ROOT=${BOOTSTRAP_ROOT:-}
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
		--url | --pool | --instance | --region | --api-id | --ca-bundle | --max-wait)
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

validate_inputs() {
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
	if ! [[ $MAX_WAIT =~ ^[0-9]{1,5}$ ]] || [ "$MAX_WAIT" -lt 1 ] || [ "$MAX_WAIT" -gt 86400 ]; then
		usage_error "--max-wait must be a whole number of seconds between 1 and 86400"
	fi
	if [ -z "$INSTANCE" ]; then INSTANCE=${HOSTNAME:-$(uname -n)}; fi
	[[ $INSTANCE =~ ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$ ]] ||
		usage_error "--instance must be 1-128 characters of A-Z a-z 0-9 . _ : - (got '$INSTANCE')"
	if [ -n "$POOL" ]; then
		[[ $POOL =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] ||
			usage_error "--pool must be 1-64 characters of A-Z a-z 0-9 . _ -"
	fi
	if [ -n "$REGION" ]; then valid_region "$REGION" || usage_error "--region '$REGION' is not a region name"; fi
	if [ -n "$API_ID" ]; then
		[[ $API_ID =~ ^[a-z0-9]{1,32}$ ]] || usage_error "--api-id must be the API's id (lower-case letters and digits)"
	fi
	if [ -n "$CA_BUNDLE" ]; then
		[ -r "$CA_BUNDLE" ] || usage_error "--ca-bundle '$CA_BUNDLE' is not a readable file"
	fi
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
}

valid_region() { [[ $1 =~ ^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$ ]]; }

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

ensure_tool() { # TOOL PACKAGE
	local tool=$1 package=$2
	command -v "$tool" >/dev/null 2>&1 && return 0
	if [ "$DRY_RUN" = 1 ]; then
		plan "install $tool: $(pkg_install_cmd "$package")"
		return 1
	fi
	log "$tool is not installed; installing it: $(pkg_install_cmd "$package")"
	if pkg_install "$package" && command -v "$tool" >/dev/null 2>&1; then
		log "installed $tool"
		return 0
	fi
	die "$EXIT_INSTALL" "$tool is required and could not be installed; install it with '$(pkg_install_cmd "$package")' and run again"
}

# --------------------------------------------------------------- registration

REG_FILE=
registered_instance_id() {
	local content
	[ -s "$REG_FILE" ] || return 1
	content=$(<"$REG_FILE")
	[[ $content =~ \"ManagedInstanceID\"[[:space:]]*:[[:space:]]*\"(mi-[0-9a-fA-F]+)\" ]] || return 1
	printf '%s' "${BASH_REMATCH[1]}"
}

have_systemctl() { command -v systemctl >/dev/null 2>&1; }

service_active() {
	if have_systemctl; then
		systemctl is-active --quiet "$SERVICE" </dev/null
	else
		service "$SERVICE" status </dev/null >/dev/null 2>&1
	fi
}

enable_and_start_service() {
	if have_systemctl; then
		systemctl enable "$SERVICE" </dev/null 2>&1 | mask_stream || return 1
		systemctl restart "$SERVICE" </dev/null 2>&1 | mask_stream || return 1
	elif command -v service >/dev/null 2>&1; then
		service "$SERVICE" restart </dev/null 2>&1 | mask_stream || return 1
	else
		log "neither systemctl nor service found; start $SERVICE by hand"
		return 1
	fi
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

# With --force on a registered server the instance name is left out: the service
# would hand back the activation this server already used a registration of,
# and registering on it again could go past its registration limit.
FRESH_SLOT=0
activation_url() {
	local base=${URL%/} query=''
	case "$base" in
	*/activation) ;;
	*) base+=/activation ;;
	esac
	if [ "$FRESH_SLOT" = 0 ]; then query="instance=$(urlencode "$INSTANCE")"; fi
	if [ -n "$POOL" ]; then query="pool=$(urlencode "$POOL")${query:+&$query}"; fi
	printf '%s%s' "$base" "${query:+?$query}"
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

# Sleep for $1 milliseconds.
sleep_ms() { sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }

# Outputs of the fetch (ACT_CODE is the secret).
ACT_ID=
ACT_CODE=
ACT_REGION=
ACT_EXPIRES=
ACT_POOL=

# GET the activation with retries: exponential backoff with jitter on
# connection failures and 5xx, the server's Retry-After on 503/429, and a hard
# deadline of --max-wait seconds.
fetch_activation() {
	{ xtrace_off; } 2>/dev/null
	local url body resp status rc attempt=0 backoff_ms=1000 wait_ms ra remaining per_try last_error='' hdr err
	local -a curl_args
	url=$(activation_url)
	hdr="$WORK/headers"
	err="$WORK/curl.err"
	curl_args=(--silent --show-error --fail --proto '=https,http' --user-agent "$PROG/1"
		-H 'Accept: application/json' --dump-header "$hdr" --write-out '\n%{http_code}')
	[ -z "$API_ID" ] || curl_args+=(-H "x-apigw-api-id: $API_ID")
	[ -z "$CA_BUNDLE" ] || curl_args+=(--cacert "$CA_BUNDLE")

	log "fetching activation: GET $url${API_ID:+ (x-apigw-api-id: $API_ID)}"
	local deadline=$((SECONDS + MAX_WAIT))
	while :; do
		remaining=$((deadline - SECONDS))
		if [ "$remaining" -le 0 ]; then
			xtrace_restore
			die "$EXIT_FETCH" "gave up fetching an activation after ${MAX_WAIT}s and $attempt attempt(s) (--max-wait $MAX_WAIT); last error: ${last_error:-none}"
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
		if [ "$rc" = 22 ] || { [ "$rc" = 0 ] && [ -n "$status" ]; }; then
			last_error="HTTP $status"
			case "$status" in
			429 | 503)
				ra=$(retry_after_seconds "$hdr")
				last_error+=" (Retry-After: ${ra:-none})"
				;;
			500 | 502 | 504) ;;
			400) xtrace_restore && die "$EXIT_FETCH" "the service rejected the request (HTTP 400): check --pool and --instance" ;;
			401 | 403) xtrace_restore && die "$EXIT_FETCH" "access denied (HTTP $status): a private API is reachable only through its VPC endpoint; with the endpoint's own DNS name pass --api-id" ;;
			404) xtrace_restore && die "$EXIT_FETCH" "not found (HTTP 404): unknown pool '${POOL:-default}' or wrong --url" ;;
			*) xtrace_restore && die "$EXIT_FETCH" "unexpected answer from the service: HTTP $status" ;;
			esac
		else
			last_error="curl exit $rc: $(head -c 300 "$err" 2>/dev/null | tr '\n' ' ')"
			case "$rc" in
			1 | 2 | 3 | 27 | 43 | 58 | 59 | 60 | 77 | 80 | 83 | 90 | 91)
				xtrace_restore
				die "$EXIT_FETCH" "cannot fetch from $URL: $last_error${CA_BUNDLE:+ (CA bundle $CA_BUNDLE)}; TLS problems: pass --ca-bundle with your CA"
				;;
			esac
		fi

		if [ -n "$ra" ]; then
			# Honour the server, plus up to 1 s of jitter so waiters do not return in lockstep.
			wait_ms=$((ra * 1000 + RANDOM % 1000))
		else
			# Equal jitter: half the backoff fixed, half random; doubling up to 16 s.
			wait_ms=$((backoff_ms / 2 + RANDOM * (backoff_ms / 2) / 32768))
			backoff_ms=$((backoff_ms < 16000 ? backoff_ms * 2 : 16000))
		fi
		remaining=$((deadline - SECONDS))
		if [ $((wait_ms / 1000)) -ge "$remaining" ]; then wait_ms=$((remaining > 0 ? remaining * 1000 : 0)); fi
		log "attempt $attempt failed ($last_error); retrying in $((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))s"
		sleep_ms "$wait_ms"
	done

	if ! command -v jq >/dev/null 2>&1; then
		# Dry run only: jq is installed before the fetch otherwise.
		plan "fetched an activation (HTTP 200, ${#body} bytes) in $attempt attempt(s); not parsed: jq is not installed"
		body=
		xtrace_restore
		return 0
	fi
	if ! printf '%s' "$body" | jq -e 'type == "object"
		and (.ActivationId | type == "string" and test("^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$"))
		and (.ActivationCode | type == "string" and test("^[A-Za-z0-9+/=_-]{1,256}$"))' >/dev/null 2>&1; then
		local size=${#body}
		body=
		xtrace_restore
		die "$EXIT_FETCH" "malformed response from the service (HTTP 200, $size bytes, not an activation JSON object with ActivationId and ActivationCode)"
	fi
	# One jq for all fields; a pipe, never a here-string (older bash puts those in a temp file).
	local -a fields
	mapfile -t fields < <(printf '%s' "$body" | jq -r '.ActivationId, .ActivationCode,
		(.Region | if type == "string" then . else "" end),
		(.ExpirationDate | if . == null then "" else tostring end),
		(.Pool | if type == "string" then . else "" end) | gsub("[\\n\\r]"; " ")')
	ACT_ID=${fields[0]:-}
	ACT_CODE=${fields[1]:-}
	ACT_REGION=${fields[2]:-}
	ACT_EXPIRES=${fields[3]:-}
	ACT_POOL=${fields[4]:-}
	fields=()
	body=
	if ! [[ $ACT_ID =~ ^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$ ]] ||
		! [[ $ACT_CODE =~ ^[A-Za-z0-9+/=_-]{1,256}$ ]]; then
		ACT_CODE=
		xtrace_restore
		die "$EXIT_FETCH" "malformed response from the service (ActivationId or ActivationCode has an unexpected format)"
	fi
	xtrace_restore
	log "got activation $ACT_ID (pool ${ACT_POOL:-?}, region ${ACT_REGION:-?}, expires ${ACT_EXPIRES:-?}) after $attempt attempt(s); code $MASK"
}

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

download() { # URL DEST: https (or a file:// mirror) only; 3 tries unless the file is not there
	local url=$1 dest=$2 try rc code
	for try in 1 2 3; do
		rc=0
		code=$(curl --silent --show-error --fail --location --proto '=https,file' --proto-redir '=https' \
			--connect-timeout 15 --max-time 600 --write-out '%{http_code}' -o "$dest" "$url" 2>"$WORK/download.err") || rc=$?
		if [ "$rc" = 0 ] && [ -s "$dest" ]; then return 0; fi
		mask_stream <"$WORK/download.err"
		rm -f "$dest"
		# Not there (S3 answers 403 for a missing key, a mirror 404 or "no such file"): no retry.
		case "$code:$rc" in 403:* | 404:* | *:37) return 1 ;; esac
		log "download of $url failed (try $try of 3)"
		[ "$try" = 3 ] || sleep "$try"
	done
	return 1
}

SETUP_CLI=
AGENT_VIA=

# ssm-setup-cli downloads the agent, verifies its signature (left on: we never
# pass -skip-signature-validation), installs, registers and starts it.
register_with_setup_cli() {
	{ xtrace_off; } 2>/dev/null
	local rc=0
	local -a args
	# The code is passed as a flag because ssm-setup-cli has no other way to take it.
	args=(-register "-activation-code=$ACT_CODE" "-activation-id=$ACT_ID" "-region=$REGION")
	[ "$FORCE" = 0 ] || args+=(-override)
	[ -z "$MANIFEST_URL" ] || args+=("-manifest-url=$MANIFEST_URL")
	log "running: ssm-setup-cli -register -activation-code=$MASK -activation-id=$ACT_ID -region=$REGION${MANIFEST_URL:+ -manifest-url=$MANIFEST_URL}$([ "$FORCE" = 0 ] || printf ' -override')"
	if command -v timeout >/dev/null 2>&1; then
		timeout 900 "$SETUP_CLI" "${args[@]}" </dev/null 2>&1 | mask_stream || rc=$?
	else
		"$SETUP_CLI" "${args[@]}" </dev/null 2>&1 | mask_stream || rc=$?
	fi
	args=()
	xtrace_restore
	return "$rc"
}

# Fallback: the agent package from the same regional bucket, installed with the
# distribution's package manager, then `amazon-ssm-agent -register ... -y`
# (-y answers the "already registered, override?" prompt, so nothing waits on stdin).
register_with_package() {
	local ext file url agent
	case "$FAMILY" in deb) ext=deb ;; *) ext=rpm ;; esac
	if command -v "$SERVICE" >/dev/null 2>&1; then
		log "fallback: $SERVICE is already installed"
	else
		url="$(download_base)/latest/$BUCKET_DIR/amazon-ssm-agent.$ext"
		file="$WORK/amazon-ssm-agent.$ext"
		log "fallback: installing the agent package from $url with $PKG"
		download "$url" "$file" || die "$EXIT_INSTALL" "could not download $url"
		chmod 0644 "$file"
		pkg_install "$file" || die "$EXIT_INSTALL" "could not install the agent package: $(pkg_install_cmd "$file") failed"
		command -v "$SERVICE" >/dev/null 2>&1 || die "$EXIT_INSTALL" "$SERVICE is not on PATH after installing the package"
	fi
	agent=$(command -v "$SERVICE")
	if have_systemctl; then systemctl stop "$SERVICE" </dev/null 2>&1 | mask_stream || true; fi

	{ xtrace_off; } 2>/dev/null
	local rc=0
	log "running: $SERVICE -register -code=$MASK -id=$ACT_ID -region=$REGION -y"
	# The code is passed as a flag because the agent has no other way to take it.
	"$agent" -register "-code=$ACT_CODE" "-id=$ACT_ID" "-region=$REGION" -y </dev/null 2>&1 | mask_stream || rc=$?
	xtrace_restore
	return "$rc"
}

install_and_register() {
	local url
	url="$(download_base)/latest/$BUCKET_DIR/ssm-setup-cli"
	SETUP_CLI="$WORK/ssm-setup-cli"
	log "downloading ssm-setup-cli from $url"
	if download "$url" "$SETUP_CLI"; then
		chmod 0700 "$SETUP_CLI"
		if register_with_setup_cli; then
			AGENT_VIA=ssm-setup-cli
			return 0
		fi
		if command -v "$SERVICE" >/dev/null 2>&1; then
			die "$EXIT_REGISTER" "ssm-setup-cli could not register this server with activation $ACT_ID (see its output above)"
		fi
		log "ssm-setup-cli failed before the agent was installed; falling back to the $PKG package"
	else
		log "ssm-setup-cli is not available; falling back to the $PKG package"
	fi
	register_with_package || die "$EXIT_REGISTER" "$SERVICE -register failed for activation $ACT_ID (see its output above)"
	AGENT_VIA="$PKG package"
}

# ---------------------------------------------------------------------- main

main() {
	parse_args "$@"
	validate_inputs
	REG_FILE="$ROOT/var/lib/amazon/ssm/registration"

	if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
		die "$EXIT_PLATFORM" "must run as root (it installs and registers the SSM Agent); try sudo, or --dry-run"
	fi

	# One bootstrap at a time on this host.
	if [ "$DRY_RUN" = 0 ] && command -v flock >/dev/null 2>&1; then
		local lockdir="$ROOT/run"
		[ -d "$lockdir" ] || lockdir="$ROOT/tmp"
		if [ -d "$lockdir" ]; then
			exec 9>"$lockdir/ssm-bootstrap.lock"
			flock -w "$((MAX_WAIT + 900))" 9 || die "$EXIT_INSTALL" "another bootstrap is still running"
		fi
	fi

	local existing
	if existing=$(registered_instance_id); then
		if [ "$FORCE" = 0 ]; then
			log "already registered as $existing; nothing to do (--force re-registers)"
			if [ "$DRY_RUN" = 0 ] && ! service_active 2>/dev/null; then
				log "$SERVICE is not running; starting it"
				enable_and_start_service || log "warning: could not start $SERVICE"
			fi
			printf 'already registered: %s\n' "$existing"
			exit "$EXIT_OK"
		fi
		log "registered as $existing; --force given, registering again with a fresh activation slot"
		FRESH_SLOT=1
	fi

	detect_platform
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	# ssm-setup-cli runs from here and keeps its artifacts beside itself, so this
	# must allow exec: /var/lib rather than /tmp, which hardened hosts mount noexec.
	WORK=$(mktemp -d "${TMPDIR:-$ROOT/var/lib}/ssm-bootstrap.XXXXXX")

	local have_jq=1
	if ! command -v curl >/dev/null 2>&1; then
		# Nothing can be fetched without curl (not even in a dry run).
		[ "$DRY_RUN" = 0 ] || die "$EXIT_INSTALL" "curl is not installed; install it with '$(pkg_install_cmd curl)'"
		ensure_tool curl curl
	fi
	ensure_tool jq jq || have_jq=0

	fetch_activation

	if [ -z "$REGION" ]; then REGION=$ACT_REGION; fi
	if [ "$have_jq" = 1 ]; then
		[ -n "$REGION" ] || die "$EXIT_FETCH" "the service returned no Region; pass --region"
		valid_region "$REGION" || die "$EXIT_FETCH" "the service returned an invalid Region '$REGION'; pass --region"
	fi

	if [ "$DRY_RUN" = 1 ]; then
		local id=${ACT_ID:-<activation-id>} region=${REGION:-<region>}
		plan "activation $id for instance '$INSTANCE' (pool ${ACT_POOL:-${POOL:-default}}, region $region, expires ${ACT_EXPIRES:-?}); code $MASK"
		REGION=$region
		plan "download $(download_base)/latest/$BUCKET_DIR/ssm-setup-cli to a private temporary directory"
		plan "run: ssm-setup-cli -register -activation-code=$MASK -activation-id=$id -region=$region${MANIFEST_URL:+ -manifest-url=$MANIFEST_URL}$([ "$FORCE" = 0 ] || printf ' -override')"
		local ext=rpm
		[ "$FAMILY" != deb ] || ext=deb
		plan "if ssm-setup-cli is unavailable: $(pkg_install_cmd "amazon-ssm-agent.$ext") from $(download_base)/latest/$BUCKET_DIR/, then $SERVICE -register -code=$MASK -id=$id -region=$region -y"
		plan "systemctl enable $SERVICE && systemctl restart $SERVICE"
		plan "check that $REG_FILE names a managed instance (mi-...) and that $SERVICE is active"
		ACT_CODE=
		printf 'dry run complete: nothing was changed\n'
		exit "$EXIT_OK"
	fi

	install_and_register
	{ xtrace_off; } 2>/dev/null
	ACT_CODE=
	xtrace_restore

	enable_and_start_service || die "$EXIT_REGISTER" "could not enable and start $SERVICE"
	local instance_id tries=0
	until instance_id=$(registered_instance_id); do
		tries=$((tries + 1))
		[ "$tries" -lt 10 ] || die "$EXIT_REGISTER" "the agent does not report a registration ($REG_FILE has no managed instance ID)"
		sleep 1
	done
	tries=0
	until service_active; do
		tries=$((tries + 1))
		[ "$tries" -lt 10 ] || die "$EXIT_REGISTER" "registered as $instance_id but $SERVICE is not running"
		sleep 1
	done
	log "registered as $instance_id in $REGION via $AGENT_VIA (activation $ACT_ID); $SERVICE is enabled and running"
	printf 'registered: %s\n' "$instance_id"
}

main "$@"
