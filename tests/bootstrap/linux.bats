#!/usr/bin/env bats
# scripts/bootstrap-linux.sh against the real service and emulator started by
# tests/bootstrap/run.sh (scripts/local.sh), with stand-ins for ssm-setup-cli,
# amazon-ssm-agent, systemctl and the package managers (see helpers.bash).
# The stub server is used only where the real service cannot produce the
# condition: a server that never answers, a malformed body, a code SSM refuses,
# and recording the request headers.

# EXTRA_ENV, TOOLBOX, MIRROR and STANDIN_BIN are read by helpers.bash; the uname
# stand-ins are single-quoted on purpose; each test changes MIRROR or TOOLBOX for itself:
# shellcheck disable=SC2034,SC2016,SC2153,SC2030,SC2031

bats_require_minimum_version 1.5.0

load helpers

setup_file() {
	require_service
	export TOOLBOX="$BATS_FILE_TMPDIR/toolbox" TOOLBOX_NOCURL="$BATS_FILE_TMPDIR/toolbox-nocurl" \
		TOOLBOX_NOGPG="$BATS_FILE_TMPDIR/toolbox-nogpg" MIRROR="$BATS_FILE_TMPDIR/mirror"
	make_toolbox "$TOOLBOX"
	make_toolbox "$TOOLBOX_NOCURL" curl
	make_toolbox "$TOOLBOX_NOGPG" gpg
	make_signing_key "$BATS_FILE_TMPDIR"
	make_mirror "$MIRROR"
	start_stub "$BATS_FILE_TMPDIR"
	export STUB_LOG="$BATS_FILE_TMPDIR/stub.log"
	export URL="$BOOTSTRAP_TEST_VENDING_URL"
}

teardown_file() {
	stop_stub "$BATS_FILE_TMPDIR"
}

setup() {
	new_server "$BATS_TEST_TMPDIR/server" rocky9
	EXTRA_ENV=()
	INSTANCE="bats-$BATS_TEST_NUMBER-$$-$RANDOM"
	: >"$STUB_LOG"
}

teardown() {
	# Never leave an injected fault behind for the next test.
	emulator DELETE /_emulator/faults >/dev/null 2>&1 || true
}

stub_requests() { grep -c . "$STUB_LOG" || true; }

@test "--help documents every flag, its environment twin and the exit codes" {
	run bootstrap --help
	assert_status 0
	for flag in --url --pool --instance --region --api-id --ca-bundle --max-wait --force --dry-run --help \
		--proxy --no-proxy --online-wait --signing-key --allow-unverified --prepare-image; do
		assert_output_has "$flag"
	done
	for twin in VENDING_URL VENDING_POOL VENDING_INSTANCE VENDING_REGION VENDING_API_ID VENDING_CA_BUNDLE \
		VENDING_MAX_WAIT VENDING_FORCE VENDING_DRY_RUN x-apigw-api-id VENDING_PROXY VENDING_NO_PROXY \
		VENDING_ONLINE_WAIT VENDING_SIGNING_KEY VENDING_ALLOW_UNVERIFIED VENDING_PREPARE_IMAGE X-Machine-Id; do
		assert_output_has "$twin"
	done
	for code in "2  usage" "3  fetch failed" "4  install failed" "5  registration failed" "6  unsupported platform"; do
		assert_output_has "$code"
	done
}

@test "usage errors exit 2: no URL, unknown flag, http to a non-loopback host, bad --max-wait" {
	run bootstrap
	assert_status 2
	assert_output_has "--url (or VENDING_URL) is required"
	run bootstrap --url "$URL" --frobnicate
	assert_status 2
	assert_output_has "unknown argument: --frobnicate"
	run bootstrap --url http://vending.example.com
	assert_status 2
	assert_output_has "must be https://"
	run bootstrap --url "$URL" --max-wait soon
	assert_status 2
	run bootstrap --url "$URL" --instance 'bad name'
	assert_status 2
	[ ! -e "$SERVER_ROOT/.standin/calls.log" ]
}

@test "fresh registration (Rocky Linux): ssm-setup-cli from linux_amd64, registered through the emulator, agent enabled and running" {
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "registered: mi-"
	assert_registered
	assert_calls_have "ssm-setup-cli bucket=linux_amd64 -register=1"
	assert_calls_have "-skip-signature-validation=0"
	assert_calls_have "systemctl enable amazon-ssm-agent"
	refute_calls_have "inherited the boot script's lock"
	[ "$(wc -l <"$SERVER_ROOT/.standin/registrations")" -eq 1 ]
	[[ $output == *"registered: $(registered_id)"* ]]
	assert_code_not_leaked
}

@test "the one-liner form: piped into bash -s, it registers (no step eats the script from stdin)" {
	run bootstrap_piped --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "registered: mi-"
	assert_registered
	assert_code_not_leaked
}

@test "fresh registration (Ubuntu) configured by environment variables alone: debian_amd64 bucket" {
	new_server "$BATS_TEST_TMPDIR/ubuntu" ubuntu2204
	EXTRA_ENV=("VENDING_URL=$URL" "VENDING_INSTANCE=$INSTANCE" "VENDING_MAX_WAIT=60" "VENDING_POOL=default")
	run bootstrap
	assert_status 0
	assert_registered
	assert_calls_have "ssm-setup-cli bucket=debian_amd64"
	assert_output_has "pool=default&instance=$INSTANCE"
	assert_code_not_leaked
}

@test "detects each distribution family and architecture (dry run against the service)" {
	local entry name pm family bucket
	# rpm distributions without dnf (CentOS 7, Amazon Linux 2) get yum.
	mkdir -p "$BATS_TEST_TMPDIR/yum-only"
	ln -s "$STANDINS_BIN/yum" "$STANDINS_BIN/systemctl" "$BATS_TEST_TMPDIR/yum-only/"
	for entry in amzn2023:dnf:rpm:linux amzn2:yum:rpm:linux rhel9:dnf:rpm:linux centos7:yum:rpm:linux \
		fedora:dnf:rpm:linux rocky9:dnf:rpm:linux alma9:dnf:rpm:linux debian12:apt-get:deb:debian \
		ubuntu2204:apt-get:deb:debian sles15:zypper:suse:linux opensuse:zypper:suse:linux; do
		IFS=: read -r name pm family bucket <<<"$entry"
		new_server "$BATS_TEST_TMPDIR/$name" "$name"
		STANDIN_BIN=$STANDINS_BIN
		[ "$pm" != yum ] || STANDIN_BIN="$BATS_TEST_TMPDIR/yum-only"
		run bootstrap --url "$URL" --instance "$INSTANCE-$name" --dry-run
		assert_status 0
		assert_output_has "($family family, $pm), amd64"
		case "$name" in
		fedora | opensuse)
			# ssm-setup-cli has no download folder for them: the package, and why.
			assert_output_has "no ssm-setup-cli on"
			assert_output_has "/latest/${bucket}_amd64/, then amazon-ssm-agent -register"
			refute_output_has "/latest/${bucket}_amd64/ssm-setup-cli"
			;;
		*) assert_output_has "/latest/${bucket}_amd64/ssm-setup-cli" ;;
		esac
	done
}

@test "aarch64 uses the arm64 download" {
	printf '#!/bin/sh\n[ "$1" = -m ] && echo aarch64 || echo Linux\n' >"$SERVER_ROOT/usr/bin/uname"
	chmod +x "$SERVER_ROOT/usr/bin/uname"
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_calls_have "ssm-setup-cli bucket=linux_arm64"
	assert_registered
}

@test "unsupported distribution: clear error, exit 6, no code fetched" {
	new_server "$BATS_TEST_TMPDIR/alpine" alpine
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE"
	assert_status 6
	assert_output_has "unsupported distribution 'Alpine Linux v3.20'"
	assert_output_has "supported: Amazon Linux, RHEL, CentOS, Fedora, Rocky, Alma, Debian, Ubuntu, SUSE"
	[ "$(stub_requests)" -eq 0 ]
}

@test "unsupported architecture: exit 6, no code fetched" {
	printf '#!/bin/sh\n[ "$1" = -m ] && echo armv7l || echo Linux\n' >"$SERVER_ROOT/usr/bin/uname"
	chmod +x "$SERVER_ROOT/usr/bin/uname"
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE"
	assert_status 6
	assert_output_has "unsupported architecture 'armv7l'"
	[ "$(stub_requests)" -eq 0 ]
}

@test "already registered: exits 0 without fetching a code, starts a stopped agent" {
	seed_registration mi-0123456789abcdef0
	mkdir -p "$SERVER_ROOT/usr/lib/systemd/system" && : >"$SERVER_ROOT/usr/lib/systemd/system/amazon-ssm-agent.service"
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "already registered: mi-0123456789abcdef0"
	[ "$(stub_requests)" -eq 0 ]
	refute_calls_have "ssm-setup-cli"
	assert_calls_have "systemctl restart amazon-ssm-agent"
	# Second run: the agent is running now, nothing is touched.
	: >"$SERVER_ROOT/.standin/calls.log"
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE"
	assert_status 0
	refute_calls_have "restart"
	[ "$(stub_requests)" -eq 0 ]
}

@test "--force (and VENDING_FORCE=1) re-register with the installed agent (-register -y overrides), naming the instance so that the registration can be confirmed" {
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	local first
	first=$(registered_id)
	run bootstrap --url "$URL" --instance "$INSTANCE" --force
	assert_status 0
	assert_output_has "--force given, registering again"
	# Only a named vend with X-Machine-Id can be confirmed (issue 22): --force names itself too.
	assert_output_has "GET $URL/activation?instance=$INSTANCE (X-Machine-Id: "
	assert_output_has "the agent is installed"
	assert_calls_have "amazon-ssm-agent -register=1 -id=$(sed -n 's/.*got activation \([0-9a-f-]*\) .*/\1/p' <<<"$output") -region=us-east-1 -y=1"
	local second
	second=$(registered_id)
	[ "$second" != "$first" ]
	EXTRA_ENV=("VENDING_FORCE=1")
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	[ "$(registered_id)" != "$second" ]
	[ "$(wc -l <"$SERVER_ROOT/.standin/registrations")" -eq 3 ]
	[ ! -s "$SERVER_ROOT/.standin/register-errors" ]
	assert_code_not_leaked
}

@test "503 then success: honours Retry-After while the service is throttled, then registers" {
	emulator POST /_emulator/faults '{"operation":"DynamoDB.UpdateItem","error":"ThrottlingException","rate":1.0}' >/dev/null
	local out="$BATS_TEST_TMPDIR/out" pid
	bootstrap --url "$URL" --instance "$INSTANCE" --max-wait 120 >"$out" 2>&1 &
	pid=$!
	for _ in $(seq 1 300); do
		grep -q "HTTP 503" "$out" && break
		sleep 0.1
	done
	sleep 1
	emulator DELETE /_emulator/faults >/dev/null
	status=0
	wait "$pid" || status=$?
	output=$(cat "$out")
	assert_status 0
	assert_output_has "HTTP 503 (Retry-After: "
	assert_output_has "registered: mi-"
	assert_registered
	assert_code_not_leaked
}

@test "a server that never answers: gives up after --max-wait with exit 3" {
	local started=$SECONDS
	run bootstrap --url "$STUB_URL/hang" --instance "$INSTANCE" --max-wait 4
	assert_status 3
	assert_output_has "gave up fetching an activation after 4s"
	assert_output_has "--max-wait 4"
	[ $((SECONDS - started)) -le 12 ]
	[ ! -e "$SERVER_ROOT/var/lib/amazon/ssm/registration" ]
	refute_calls_have "ssm-setup-cli"
}

@test "connection refused: retries with backoff and jitter, then exit 3" {
	local port
	port=$("$TEST_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	run bootstrap --url "http://127.0.0.1:$port" --instance "$INSTANCE" --max-wait 4
	assert_status 3
	assert_output_has "retrying in"
	assert_output_has "curl exit 7"
	[ "$(grep -c 'failed (curl exit 7' <<<"$output")" -ge 2 ]
}

@test "malformed JSON or an HTML page instead of an activation: exit 3, nothing installed" {
	run bootstrap --url "$STUB_URL/malformed" --instance "$INSTANCE"
	assert_status 3
	assert_output_has "malformed response from the service"
	run bootstrap --url "$STUB_URL/html" --instance "$INSTANCE"
	assert_status 3
	assert_output_has "malformed response from the service"
	refute_calls_have "ssm-setup-cli"
	refute_calls_have "install"
}

@test "early boot: no jq on the server and none installed; the answer is read by the script itself" {
	new_server "$BATS_TEST_TMPDIR/debian" debian12
	[ ! -e "$TOOLBOX/jq" ]
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	refute_output_has "jq"
	refute_calls_have "install jq"
	assert_registered
	assert_code_not_leaked
}

@test "early boot: curl missing and the package manager failing at first (no network yet): retried, then registers" {
	new_server "$BATS_TEST_TMPDIR/debian" debian12
	TOOLBOX=$TOOLBOX_NOCURL
	EXTRA_ENV=("STANDIN_PKG_FLAKY=2")
	run bootstrap --url "$URL" --instance "$INSTANCE" --max-wait 30
	assert_status 0
	assert_output_has "curl is not installed; installing it: apt-get install -y curl"
	assert_output_has "installing curl failed (attempt 2); retrying in"
	assert_output_has "installed curl"
	assert_registered
}

@test "curl missing and not installable within --max-wait: exit 4 with how to install it, no code fetched" {
	new_server "$BATS_TEST_TMPDIR/sles" sles15
	TOOLBOX=$TOOLBOX_NOCURL
	EXTRA_ENV=("STANDIN_PKG_FAIL=curl")
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE" --max-wait 2
	assert_status 4
	assert_output_has "install it with 'zypper --non-interactive install curl'"
	[ "$(stub_requests)" -eq 0 ]
}

@test "SSM refuses the activation twice: reported, asked once more, then exit 5, 'refused: <Code>' read from the agent's output, the machine says it is unregistered" {
	run bootstrap --url "$STUB_URL/refused" --instance "$INSTANCE"
	assert_status 5
	# One report of the first refusal, one more vend; the second refusal is final.
	[ "$(jq -s '[.[] | select(.method == "GET")] | length' "$STUB_LOG")" -eq 2 ] || fail "expected exactly 2 vends: $(cat "$STUB_LOG")"
	jq -se '[.[] | select(.method == "POST")] | length == 1 and (.[0].body | keys == ["ActivationId", "Error"]) and .[0].body.Error == "InvalidActivation"' "$STUB_LOG" >/dev/null ||
		fail "expected one refusal report: $(cat "$STUB_LOG")"
	[ "$(grep -c . "$SERVER_ROOT/.standin/register-errors")" -eq 2 ]
	[ "$(grep -c '^refused: ' <<<"$output")" -eq 1 ]
	[[ $output == *$'\nrefused: InvalidActivation\n'* ]] || [[ $output == "refused: InvalidActivation"$'\n'* ]] || {
		show_run
		fail "no 'refused: InvalidActivation' line"
	}
	assert_output_has "could not register this server"
	assert_output_has "now UNREGISTERED"
	grep -qx InvalidActivation "$SERVER_ROOT/.standin/register-errors"
	[ ! -e "$SERVER_ROOT/var/lib/amazon/ssm/registration" ]
	assert_code_not_leaked
}

@test "a refused re-registration leaves the machine unregistered (the agent blanked its identity): exit 5, the stale file removed; the next run registers afresh" {
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	local first
	first=$(registered_id)
	# Re-registration with an activation SSM refuses: the agent blanks its identity first.
	run bootstrap --url "$STUB_URL/refused" --instance "$INSTANCE" --force
	assert_status 5
	assert_output_has "refused: InvalidActivation"
	assert_output_has "now UNREGISTERED"
	[ -z "$(vault_id)" ]
	[ ! -e "$SERVER_ROOT/var/lib/amazon/ssm/registration" ]
	[ ! -e "$SERVER_ROOT/var/lib/amazon/ssm/activation-vending.machine" ]
	# Nothing can use the old node now: the agent has no identity and dies at start.
	run env STANDIN_DIR="$STANDINS" STANDIN_REAL_PATH="$PATH" BOOTSTRAP_ROOT="$SERVER_ROOT" "$STANDINS/ssm-cli" get-instance-information
	[ "$status" -eq 255 ] && [[ $output == *"failed to find agent identity"* ]]
	# The next boot: not "already registered", a clean registration.
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	refute_output_has "already registered"
	assert_output_has "registered: mi-"
	[ "$(registered_id)" != "$first" ]
	assert_registered
	assert_code_not_leaked
}

@test "a registration file the agent's own identity does not back is no registration (e.g. after -register -clear): registers afresh" {
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	local first
	first=$(registered_id)
	run env STANDIN_DIR="$STANDINS" STANDIN_REAL_PATH="$PATH" BOOTSTRAP_ROOT="$SERVER_ROOT" "$STANDINS/amazon-ssm-agent" -register -clear
	[ "$status" -eq 0 ]
	[ "$(registered_id)" = "$first" ] # -clear leaves the file
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "not registered: $SERVER_ROOT/var/lib/amazon/ssm/registration names $first but the agent's own identity is empty"
	assert_output_has "registered: mi-"
	[ "$(registered_id)" != "$first" ]
	assert_registered
}

@test "a -register that cannot reach SSM is stopped after its timeout: exit 5, no route named, the machine unregistered" {
	ln -s "$STANDINS/amazon-ssm-agent" "$SERVER_ROOT/usr/bin/amazon-ssm-agent"
	mkdir -p "$SERVER_ROOT/usr/lib/systemd/system" && : >"$SERVER_ROOT/usr/lib/systemd/system/amazon-ssm-agent.service"
	EXTRA_ENV=("STANDIN_AGENT_REGISTER_HANG=1" "BOOTSTRAP_REGISTER_TIMEOUT=2")
	SECONDS=0
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 5
	[ "$SECONDS" -lt 60 ]
	assert_output_has "did not finish registering within 2s: no route to SSM?"
	assert_output_has "--proxy"
	refute_output_has "refused:"
	refute_output_has "registered: mi-"
	# Refused at once (connection refused): the SDK's RequestError, no refusal either.
	EXTRA_ENV=("STANDIN_EMULATOR_URL=http://127.0.0.1:9")
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 5
	assert_output_has "AWS SSM. RequestError: send request failed"
	assert_output_has "could not reach SSM (RequestError, see its output above): no route to SSM?"
	assert_output_has "now UNREGISTERED"
	refute_output_has "refused:"
}

@test "Fedora and openSUSE go straight to the agent package (ssm-setup-cli has no download folder there) and say why" {
	local distro
	for distro in fedora opensuse; do
		new_server "$BATS_TEST_TMPDIR/$distro" "$distro"
		run bootstrap --url "$URL" --instance "$INSTANCE-$distro"
		assert_status 0
		assert_output_has "not using ssm-setup-cli on"
		assert_output_has "fails its own checksum there"
		refute_calls_have "ssm-setup-cli"
		assert_output_has "installing the agent package from file://$MIRROR/latest/linux_amd64/amazon-ssm-agent.rpm"
		assert_calls_have "/amazon-ssm-agent.rpm"
		assert_registered
	done
}

@test "--allow-unverified without gpg: ssm-setup-cli gets -skip-signature-validation, without which it refuses to install (it runs gpg itself)" {
	TOOLBOX=$TOOLBOX_NOGPG
	run bootstrap --url "$URL" --instance "$INSTANCE" --allow-unverified
	assert_status 0
	assert_output_has "running ssm-setup-cli UNVERIFIED"
	assert_output_has "passing -skip-signature-validation"
	assert_calls_have "-skip-signature-validation=1"
	assert_registered
}

@test "proxy credentials are never printed, though the agent and ssm-setup-cli log them" {
	local proxy='http://agent:s3cr3t-pw@proxy.example.internal:3128'
	EXTRA_ENV=("STANDIN_AGENT_NETWORK=proxy=$proxy")
	run bootstrap --url "$URL" --instance "$INSTANCE" --proxy "$proxy"
	assert_status 0
	refute_output_has "s3cr3t-pw"
	assert_output_has "http://********@proxy.example.internal:3128"
	# The agent itself writes them to its log (the docs say so): this is why.
	grep -q 's3cr3t-pw' "$SERVER_ROOT/var/log/amazon/ssm/amazon-ssm-agent.log"
	assert_registered
}

@test "fallback: ssm-setup-cli fails before installing, the agent rpm is installed with dnf and registered with -y" {
	EXTRA_ENV=("STANDIN_SETUP_CLI_FAIL=install")
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "falling back to the dnf package"
	assert_calls_have "amazon-ssm-agent.rpm"
	assert_calls_have "amazon-ssm-agent -register=1"
	assert_calls_have "-y=1"
	assert_output_has "via dnf package"
	assert_registered
	assert_code_not_leaked
}

@test "fallback: no ssm-setup-cli in the bucket, the agent deb is installed with apt-get" {
	new_server "$BATS_TEST_TMPDIR/ubuntu" ubuntu2204
	cp -r "$MIRROR" "$BATS_TEST_TMPDIR/mirror"
	rm "$BATS_TEST_TMPDIR/mirror/latest/debian_amd64/ssm-setup-cli"
	MIRROR="$BATS_TEST_TMPDIR/mirror"
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "ssm-setup-cli is not available; falling back to the apt-get package"
	assert_output_has "debian_amd64/amazon-ssm-agent.deb with apt-get"
	assert_calls_have "install $SERVER_ROOT/var/lib/ssm-bootstrap."
	assert_registered
	assert_code_not_leaked
}

@test "unknown pool: exit 3 at once with the service's 404" {
	local started=$SECONDS
	run bootstrap --url "$URL" --pool no-such-pool --instance "$INSTANCE"
	assert_status 3
	assert_output_has "HTTP 404"
	assert_output_has "no-such-pool"
	[ $((SECONDS - started)) -le 10 ]
}

@test "--dry-run fetches to prove connectivity, masks the code, changes nothing; default instance is the host name" {
	run bootstrap --url "$URL" --dry-run
	assert_status 0
	assert_output_has "[dry-run] activation "
	assert_output_has "instance '$(uname -n)'"
	assert_output_has "-activation-code=********"
	assert_output_has "dry run complete: nothing was changed"
	[ ! -e "$SERVER_ROOT/.standin/calls.log" ]
	[ ! -e "$SERVER_ROOT/var/lib/amazon/ssm/registration" ]
	# The service hands the same name the same activation: its code must not have been shown.
	local code
	code=$(curl -sS --fail "$URL/activation?instance=$(uname -n)" | jq -r .ActivationCode)
	[ -n "$code" ]
	refute_output_has "$code"
}

@test "--api-id sends x-apigw-api-id; --pool and --instance go in the query" {
	run bootstrap --url "$STUB_URL/echo/" --api-id abc123def4 --pool web --instance "$INSTANCE" --dry-run
	assert_status 0
	[ "$(stub_requests)" -eq 1 ]
	jq -e --arg p "/echo/activation?pool=web&instance=$INSTANCE" \
		'.path == $p and .headers["x-apigw-api-id"] == "abc123def4"' "$STUB_LOG"
}

@test "TLS is verified: an unknown CA fails with exit 3 (retried: curl 60 is also a clock not yet synced); --ca-bundle (or VENDING_CA_BUNDLE) with that CA succeeds" {
	run bootstrap --url "$STUB_TLS_URL/echo" --instance "$INSTANCE" --dry-run --max-wait 3
	assert_status 3
	assert_output_has "curl exit 60"
	assert_output_has "retrying in"
	assert_output_has "check the clock"
	assert_output_has "(--ca-bundle)"
	[ "$(stub_requests)" -eq 0 ]
	run bootstrap --url "$STUB_TLS_URL/echo" --instance "$INSTANCE" --ca-bundle "$STUB_CA" --dry-run
	assert_status 0
	assert_output_has "dry run complete"
	EXTRA_ENV=("VENDING_CA_BUNDLE=$STUB_CA")
	run bootstrap --url "$STUB_TLS_URL/echo" --instance "$INSTANCE" --dry-run
	assert_status 0
	[ "$(stub_requests)" -eq 2 ]
}

@test "the code appears nowhere: not in output, not in a bash -x trace, not on disk" {
	run bootstrap_traced --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "+ detect_platform"
	assert_registered
	assert_code_not_leaked
}

@test "refuses to run as a normal user" {
	command -v setpriv >/dev/null || skip "setpriv is not installed"
	# The checkout may sit where user 65534 cannot enter (a clone under /root, a
	# mktemp -d): run a copy from a folder that user can read.
	local readable
	readable=$(mktemp -d /tmp/bootstrap-normal-user.XXXXXX)
	chmod 755 "$readable"
	install -m 755 "$BOOTSTRAP_LINUX" "$readable/bootstrap-linux.sh"
	run setpriv --reuid 65534 --regid 65534 --clear-groups env -i PATH=/usr/bin:/bin "$readable/bootstrap-linux.sh" --url "$URL"
	rm -rf "$readable"
	assert_status 6
	assert_output_has "must run as root"
}

# ------------------------------------------------------- issue 8: identity, names

@test "X-Machine-Id: the SHA-256 of /etc/machine-id on every vend request, never the raw value" {
	local raw want
	raw=$(tr -d '[:space:]' <"$SERVER_ROOT/etc/machine-id")
	want=$(machine_digest "$SERVER_ROOT")
	[[ $want =~ ^[0-9a-f]{64}$ ]]
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE" --dry-run
	assert_status 0
	jq -e --arg m "$want" '.headers["x-machine-id"] == $m' "$STUB_LOG"
	refute_output_has "$raw"
	run ! grep -q "$raw" "$STUB_LOG"
}

@test "X-Machine-Id falls back to the DMI product UUID, and is left out when neither is readable" {
	local uuid=4C4C4544-0042-3510-8051-B7C04F4E3233
	rm "$SERVER_ROOT/etc/machine-id"
	mkdir -p "$SERVER_ROOT/sys/class/dmi/id"
	printf '%s\n' "$uuid" >"$SERVER_ROOT/sys/class/dmi/id/product_uuid"
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE" --dry-run
	assert_status 0
	jq -e --arg m "$(sha256_of "$uuid")" '.headers["x-machine-id"] == $m' "$STUB_LOG"
	refute_output_has "$uuid"
	rm "$SERVER_ROOT/sys/class/dmi/id/product_uuid"
	: >"$STUB_LOG"
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE" --dry-run
	assert_status 0
	jq -e '.headers | has("x-machine-id") | not' "$STUB_LOG"
}

@test "--instance and --pool are checked as the service checks them: exit 2, nothing asked" {
	local bad long63 long64
	long63=$(printf 'b%.0s' {1..63})
	long64=$(printf 'b%.0s' {1..64})
	for bad in 'web:01' 'a..b' '-web' 'web-' 'web.' 'a b' "$long64" "$long63.$long63.$long63.$long63.x"; do
		run bootstrap --url "$STUB_URL/echo" --instance "$bad"
		assert_status 2
		assert_output_has "is not a host name the service accepts"
	done
	for bad in 'web.prod' 'a/b' "$long64-x"; do
		run bootstrap --url "$STUB_URL/echo" --pool "$bad" --instance "$INSTANCE"
		assert_status 2
		assert_output_has "is not a pool name"
	done
	EXTRA_ENV=("VENDING_INSTANCE=db:1")
	run bootstrap --url "$STUB_URL/echo"
	assert_status 2
	[ "$(stub_requests)" -eq 0 ]
	# What the service accepts passes: underscores, 63-character labels, a pool starting with _.
	EXTRA_ENV=()
	run bootstrap --url "$STUB_URL/echo" --pool _web-01 --instance "WIN_SRV-01.$long63.example" --dry-run
	assert_status 0
}

@test "a 400 from the service is final: exit 3 at once with its message, never retried" {
	local started=$SECONDS
	run bootstrap --url "$STUB_URL/badrequest" --instance "$INSTANCE" --max-wait 60
	assert_status 3
	assert_output_has "HTTP 400"
	assert_output_has "is not a valid instance name"
	refute_output_has "retrying in"
	[ "$(stub_requests)" -eq 1 ]
	[ $((SECONDS - started)) -le 10 ]
}

# ------------------------------------------------------- issue 10: pools

@test "a pool's own verdict is final: 404 PoolNotFound, 403 PoolDisabled or Forbidden, 500 PoolMisconfigured exit 3 at once, naming the pool and the reason" {
	local mode expect started
	# The modes come in on descriptor 3: the script under test must not eat them from stdin.
	while IFS='|' read -r -u 3 mode expect; do
		: >"$STUB_LOG"
		started=$SECONDS
		run bootstrap --url "$STUB_URL/$mode" --pool web-01 --instance "$INSTANCE" --max-wait 60
		assert_status 3
		assert_output_has "pool 'web-01' $expect"
		assert_output_has "not retried"
		refute_output_has "retrying in"
		[ "$(stub_requests)" -eq 1 ] || fail "$mode: asked $(stub_requests) times"
		[ $((SECONDS - started)) -le 10 ] || fail "$mode: took $((SECONDS - started))s"
		[ ! -e "$SERVER_ROOT/usr/bin/amazon-ssm-agent" ] || fail "$mode: installed the agent anyway"
	done 3<<'MODES'
notfound|does not exist (HTTP 404 PoolNotFound: no such pool)
pooldisabled|is disabled (HTTP 403 PoolDisabled: pool `web-01` is disabled)
forbidden|refuses this server (HTTP 403 Forbidden: 127.0.0.1 may not draw from pool `web-01`): its address is not in the pool's allowed_cidrs
misconfigured|is misconfigured (HTTP 500 PoolMisconfigured: pool `web-01`: registration_limit: 0 is not 1..1000)
MODES
}

@test "without --pool the verdict names the default pool" {
	run bootstrap --url "$STUB_URL/pooldisabled" --instance "$INSTANCE" --max-wait 60
	assert_status 3
	assert_output_has "pool 'default' is disabled (HTTP 403 PoolDisabled"
}

@test "API Gateway's own 403 (endpoint or AllowedSourceCidrs) is final and says where to look" {
	run bootstrap --url "$STUB_URL/accessdenied" --pool web-01 --instance "$INSTANCE" --max-wait 60
	assert_status 3
	assert_output_has "access denied (HTTP 403 AccessDenied: not reachable from here)"
	assert_output_has "AllowedSourceCidrs"
	refute_output_has "retrying in"
	[ "$(stub_requests)" -eq 1 ]
}

@test "any other 500 is still retried until --max-wait" {
	run bootstrap --url "$STUB_URL/internal" --pool web-01 --instance "$INSTANCE" --max-wait 3
	assert_status 3
	assert_output_has "retrying in"
	assert_output_has "HTTP 500 InternalError"
	[ "$(stub_requests)" -ge 2 ]
}

# ------------------------------------------------------- issue 9: real networks

@test "--help: --instance is the name the vending service knows the server by, not its name in SSM" {
	run bootstrap --help
	assert_status 0
	assert_output_has "The name the vending service knows this server by"
	assert_output_has "It"$'\n'
	assert_output_has "is not the server's name in SSM"
}

@test "--proxy: the fetch goes through it (loopback never does), also from https_proxy; the agent gets a systemd drop-in and connects through it" {
	local dropin="$SERVER_ROOT/etc/systemd/system/amazon-ssm-agent.service.d/activation-vending-proxy.conf"
	run bootstrap --url https://vending.test/echo --ca-bundle "$STUB_CA" --proxy "$STUB_PROXY" --instance "$INSTANCE" --dry-run --max-wait 10
	assert_status 0
	jq -se 'map(select(.mode == "proxy-connect")) | length == 1 and .[0].path == "vending.test:443"' "$STUB_LOG"
	assert_output_has "[dry-run] write $dropin"
	: >"$STUB_LOG"
	EXTRA_ENV=("https_proxy=$STUB_PROXY")
	run bootstrap --url https://vending.test/echo --ca-bundle "$STUB_CA" --instance "$INSTANCE" --dry-run --max-wait 10
	assert_status 0
	jq -se 'map(select(.mode == "proxy-connect")) | length == 1' "$STUB_LOG"
	# The real service is on loopback: not proxied even with --proxy. The agent reaches
	# SSM only through the proxy, so it connects only once the drop-in is there.
	EXTRA_ENV=("STANDIN_AGENT_NETWORK=proxy=http://proxy.example.internal:3128")
	run bootstrap --url "$URL" --instance "$INSTANCE" --proxy http://proxy.example.internal:3128 --no-proxy .corp.example
	assert_status 0
	grep -qx 'Environment="https_proxy=http://proxy.example.internal:3128"' "$dropin"
	grep -qx 'Environment="http_proxy=http://proxy.example.internal:3128"' "$dropin"
	grep -qx 'Environment="no_proxy=169.254.169.254,.corp.example"' "$dropin"
	assert_calls_have "systemctl daemon-reload"
	assert_output_has "registered: mi-"
	assert_registered
	assert_code_not_leaked
}

@test "success means online: an agent with no route to SSM (it needs a proxy nobody gave it) exits 5 within --online-wait, from the core's credential error, never 'registered:'" {
	EXTRA_ENV=("STANDIN_AGENT_NETWORK=proxy=http://proxy.example.internal:3128")
	run bootstrap --url "$URL" --instance "$INSTANCE" --online-wait 3
	assert_status 5
	assert_output_has "not online after --online-wait 3s"
	assert_output_has "the agent cannot get credentials from Systems Manager"
	assert_output_has "Retrieve credentials produced error"
	assert_output_has "no route to SSM? proxy: --proxy"
	refute_output_has "registered: mi-"
	# SSM never saw it check in.
	[ "$(emulator GET "/_emulator/nodes/$(registered_id)" | jq -r .PingStatus)" = ConnectionLost ]
}

@test "success means online: registered and running but never connecting exits 5 after --online-wait; the next boot checks again" {
	EXTRA_ENV=("STANDIN_AGENT_NETWORK=silent")
	run bootstrap --url "$URL" --instance "$INSTANCE" --online-wait 2
	assert_status 5
	assert_output_has "not online after --online-wait 2s"
	assert_output_has "Credentials ready"
	refute_output_has "registered: mi-"
	# Next boot, the network is fine: no new activation, the agent is started and seen online.
	EXTRA_ENV=()
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "the agent was not seen online yet"
	assert_output_has "registered: mi-"
	[ "$(stub_requests)" -eq 0 ]
	assert_registered
}

@test "golden image: a clone (new machine id) clears the old registration and registers afresh with -override; the original exits early" {
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	local first
	first=$(registered_id)
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "already registered: $first"
	[ "$(stub_requests)" -eq 0 ]
	# The image is cloned: the same files, a new /etc/machine-id.
	new_machine_id "$SERVER_ROOT"
	: >"$SERVER_ROOT/.standin/calls.log"
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "but on another machine"
	assert_calls_have "amazon-ssm-agent -register -clear"
	assert_calls_have "-y=1"
	assert_output_has "registered: mi-"
	[ "$(registered_id)" != "$first" ]
	assert_registered
	[ ! -s "$SERVER_ROOT/.standin/register-errors" ]
	assert_code_not_leaked
}

@test "--prepare-image stops the agent and clears the registration (no --url needed); the next boot registers afresh" {
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	local first
	first=$(registered_id)
	run bootstrap --prepare-image
	assert_status 0
	assert_output_has "image prepared"
	assert_calls_have "systemctl stop amazon-ssm-agent"
	assert_calls_have "amazon-ssm-agent -register -clear"
	[ ! -e "$SERVER_ROOT/var/lib/amazon/ssm/registration" ]
	[ ! -e "$SERVER_ROOT/var/lib/amazon/ssm/activation-vending.machine" ]
	[ ! -e "$SERVER_ROOT/.standin/systemd/amazon-ssm-agent.active" ]
	new_machine_id "$SERVER_ROOT"
	run bootstrap --url "$URL" --instance "$INSTANCE-clone"
	assert_status 0
	[ "$(registered_id)" != "$first" ]
	assert_registered
}

@test "verified installs: an ssm-setup-cli that does not match its signature is never run, not even with --allow-unverified" {
	cp -r "$MIRROR" "$BATS_TEST_TMPDIR/mirror"
	MIRROR="$BATS_TEST_TMPDIR/mirror"
	printf '\n# tampered\n' >>"$MIRROR/latest/linux_amd64/ssm-setup-cli"
	run bootstrap --url "$URL" --instance "$INSTANCE" --allow-unverified
	assert_status 4
	assert_output_has "ssm-setup-cli from file://$MIRROR/latest/linux_amd64/ssm-setup-cli does NOT match its signature"
	refute_calls_have "ssm-setup-cli"
	refute_calls_have "install"
}

@test "verified installs: no gpg, or no key, is exit 4 saying why; --allow-unverified (or VENDING_ALLOW_UNVERIFIED=1) runs it" {
	TOOLBOX=$TOOLBOX_NOGPG
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 4
	assert_output_has "cannot verify ssm-setup-cli: gpg is not installed (install it: dnf install -y gnupg2)"
	assert_output_has "--allow-unverified"
	refute_calls_have "ssm-setup-cli"
	TOOLBOX="$BATS_FILE_TMPDIR/toolbox"
	USE_SIGNING_KEY=0
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 4
	assert_output_has "no SSM Agent signing key"
	refute_calls_have "ssm-setup-cli"
	EXTRA_ENV=("VENDING_ALLOW_UNVERIFIED=1")
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "running ssm-setup-cli UNVERIFIED"
	assert_registered
}

@test "verified installs: a file:// mirror without .sig files needs --allow-unverified; the key's default location works" {
	cp -r "$MIRROR" "$BATS_TEST_TMPDIR/mirror"
	find "$BATS_TEST_TMPDIR/mirror" -name '*.sig' -delete
	local signed=$MIRROR
	MIRROR="$BATS_TEST_TMPDIR/mirror"
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 4
	assert_output_has "no signature at file://$MIRROR/latest/linux_amd64/ssm-setup-cli.sig"
	refute_calls_have "ssm-setup-cli"
	MIRROR=$signed
	USE_SIGNING_KEY=0
	mkdir -p "$SERVER_ROOT/etc/activation-vending"
	cp "$SIGNING_KEY_FILE" "$SERVER_ROOT/etc/activation-vending/ssm-agent-signing-key.asc"
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "verified ssm-setup-cli against $SERVER_ROOT/etc/activation-vending/ssm-agent-signing-key.asc"
	assert_registered
}

@test "agent already installed (Amazon Linux, images with the agent): registered with amazon-ssm-agent -register -y, no ssm-setup-cli; only its log since this start counts" {
	new_server "$BATS_TEST_TMPDIR/al2023" amzn2023
	ln -s "$STANDINS/amazon-ssm-agent" "$SERVER_ROOT/usr/bin/amazon-ssm-agent"
	mkdir -p "$SERVER_ROOT/usr/lib/systemd/system" "$SERVER_ROOT/var/log/amazon/ssm"
	: >"$SERVER_ROOT/usr/lib/systemd/system/amazon-ssm-agent.service"
	# A long log from the image's earlier life, ending in a hibernation: only what the
	# agent logs after this start counts.
	yes '2026-01-01 00:00:00 INFO [ssm-agent-worker] an old line of the agent log' | head -n 40000 \
		>"$SERVER_ROOT/var/log/amazon/ssm/amazon-ssm-agent.log"
	echo '2026-01-01 00:00:01 INFO Entering SSM Agent hibernate - AccessDeniedException' >>"$SERVER_ROOT/var/log/amazon/ssm/amazon-ssm-agent.log"
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "the agent is installed"
	assert_calls_have "amazon-ssm-agent -register=1"
	assert_calls_have "-y=1"
	refute_calls_have "ssm-setup-cli"
	refute_output_has "downloading ssm-setup-cli"
	assert_output_has "via installed agent"
	refute_calls_have "inherited the boot script's lock"
	assert_registered
	assert_code_not_leaked
}

@test "Ubuntu snap: the snap's agent, its unit snap.amazon-ssm-agent.amazon-ssm-agent and that unit's drop-in are used" {
	new_server "$BATS_TEST_TMPDIR/ubuntu" ubuntu2204
	local unit=snap.amazon-ssm-agent.amazon-ssm-agent
	mkdir -p "$SERVER_ROOT/snap/amazon-ssm-agent/current" "$SERVER_ROOT/etc/systemd/system"
	ln -s "$STANDINS/amazon-ssm-agent" "$SERVER_ROOT/snap/amazon-ssm-agent/current/amazon-ssm-agent"
	: >"$SERVER_ROOT/etc/systemd/system/$unit.service"
	EXTRA_ENV=("STANDIN_AGENT_NETWORK=proxy=http://proxy.example.internal:3128")
	run bootstrap --url "$URL" --instance "$INSTANCE" --proxy http://proxy.example.internal:3128
	assert_status 0
	assert_calls_have "systemctl enable $unit"
	assert_calls_have "systemctl restart $unit"
	[ -s "$SERVER_ROOT/etc/systemd/system/$unit.service.d/activation-vending-proxy.conf" ]
	refute_calls_have "ssm-setup-cli"
	assert_registered "$unit"
	assert_code_not_leaked
}

# ------------------------------------------------ reports to the service (issue 22)

# The stub's log entries of one method, as a JSON array.
stub_entries() { # METHOD
	jq -sc --arg m "$1" '[.[] | select(.method == $m)]' "$STUB_LOG"
}

@test "after registering, the registration is reported to the real service; a service without POST /registrations is a warning, exit 0" {
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_registered
	local id
	id=$(registered_id)
	assert_output_has "confirming the registration: POST $URL/registrations (InstanceId $id, ActivationId "
	# Without the route (404) a warning; with it, the confirmation. Never a failed boot.
	[[ $output == *"confirmed: $id "* ]] || [[ $output == *"WARNING: the service did not confirm the registration (HTTP 404"* ]] || {
		show_run
		fail "neither a confirmation nor the warning"
	}
	assert_output_has "registered: $id"
	assert_code_not_leaked
}

@test "a confirmation: POST /registrations with the vend's pool query, X-Machine-Id and {InstanceId, ActivationId, Instance}; the Name tag and replaced nodes are printed" {
	run bootstrap --url "$STUB_URL/confirmed" --pool default --instance "$INSTANCE"
	assert_status 0
	assert_registered
	local id activation digest
	id=$(registered_id)
	digest=$(machine_digest "$SERVER_ROOT")
	activation=$(sed -n 's/.*got activation \([0-9a-f-]*\) .*/\1/p' <<<"$output")
	[ -n "$activation" ]
	stub_entries GET | jq -e --arg p "/confirmed/activation?pool=default&instance=$INSTANCE" --arg m "$digest" \
		'length == 1 and .[0].path == $p and .[0].headers["x-machine-id"] == $m' >/dev/null || fail "the vend: $(stub_entries GET)"
	stub_entries POST | jq -e --arg m "$digest" --arg id "$id" --arg a "$activation" --arg n "$INSTANCE" \
		'length == 1 and .[0].path == "/confirmed/registrations?pool=default" and .[0].headers["x-machine-id"] == $m
		 and .[0].headers["content-type"] == "application/json"
		 and .[0].body == {"InstanceId": $id, "ActivationId": $a, "Instance": $n}' >/dev/null ||
		fail "the report: $(stub_entries POST)"
	assert_output_has "confirmed: $id (Name=$INSTANCE; replaced: mi-0123456789abcdef0)"
	assert_output_has "registered: $id"
	assert_code_not_leaked
}

@test "a confirmation the service refuses or cannot take is a warning, never a failed boot: 403 NotConfirmable, 404 without the route, 503 past a few seconds" {
	local mode
	for mode in notconfirmable noroute throttled; do
		new_server "$BATS_TEST_TMPDIR/server-$mode" rocky9
		SECONDS=0
		run bootstrap --url "$STUB_URL/$mode" --instance "$INSTANCE-$mode"
		assert_status 0
		assert_registered
		assert_output_has "registered: $(registered_id)"
		refute_output_has "confirmed: "
		assert_code_not_leaked
		case "$mode" in
		notconfirmable) assert_output_has "WARNING: the service did not confirm the registration (HTTP 403 NotConfirmable: the node was registered before the vend)" ;;
		noroute) assert_output_has "WARNING: the service did not confirm the registration (HTTP 404 NotFound" ;;
		throttled)
			assert_output_has "reporting to the service: 503; trying again in 1s"
			assert_output_has "WARNING: the service did not confirm the registration (HTTP 503 Throttled"
			# Bounded: a handful of tries within the report's few seconds.
			[ "$(stub_entries POST | jq length)" -ge 2 ] && [ "$(stub_entries POST | jq length)" -le 8 ] || fail "not a bounded retry: report attempts: $(stub_entries POST | jq length)"
			[ "$SECONDS" -lt 30 ]
			;;
		esac
		: >"$STUB_LOG"
	done
}

@test "a refused code is reported (ActivationId and Error), then the script asks once more: exactly one more vend and registration, then confirmed" {
	run bootstrap --url "$STUB_URL/refusedonce" --instance "$INSTANCE"
	assert_status 0
	assert_registered
	local id digest first second
	id=$(registered_id)
	digest=$(machine_digest "$SERVER_ROOT")
	assert_output_has "reporting it and asking for an activation once more"
	refute_output_has "refused: "
	# In order: the refused vend, the refusal report, one more vend, the confirmation.
	jq -sc '[.[] | .method + " " + (.path | sub("\\?.*"; ""))]' "$STUB_LOG" |
		grep -qxF '["GET /refusedonce/activation","POST /refusedonce/registrations","GET /refusedonce/activation","POST /refusedonce/registrations"]' ||
		fail "unexpected requests: $(cat "$STUB_LOG")"
	first=$(sed -n 's/.*got activation \([0-9a-f-]*\) .*/\1/p' <<<"$output" | sed -n 1p)
	second=$(sed -n 's/.*got activation \([0-9a-f-]*\) .*/\1/p' <<<"$output" | sed -n 2p)
	[ -n "$first" ] && [ -n "$second" ] && [ "$first" != "$second" ]
	stub_entries POST | jq -e --arg a "$first" --arg b "$second" --arg id "$id" --arg m "$digest" '
		.[0].body == {"ActivationId": $a, "Error": "InvalidActivation"} and .[0].headers["x-machine-id"] == $m
		and .[1].body.InstanceId == $id and .[1].body.ActivationId == $b' >/dev/null || fail "the reports: $(stub_entries POST)"
	assert_output_has "the service checked activation $first with SSM: Confirmed true (retired)"
	assert_output_has "confirmed: $id"
	[ "$(grep -c . "$SERVER_ROOT/.standin/register-errors")" -eq 1 ]
	[ "$(grep -c . "$SERVER_ROOT/.standin/registrations")" -eq 1 ]
	[ "$(grep -c . "$SERVER_ROOT/.standin/received-codes")" -eq 2 ]
	assert_code_not_leaked
}
