#!/usr/bin/env bats
# scripts/bootstrap-linux.sh against the real service and emulator started by
# tests/bootstrap/run.sh (scripts/local.sh), with stand-ins for ssm-setup-cli,
# amazon-ssm-agent, systemctl and the package managers (see helpers.bash).
# The stub server is used only where the real service cannot produce the
# condition: a server that never answers, a malformed body, a code SSM refuses,
# and recording the request headers.

# EXTRA_ENV, TOOLBOX, MIRROR and STANDIN_BIN are read by helpers.bash; the uname
# stand-ins are single-quoted on purpose:
# shellcheck disable=SC2034,SC2016,SC2153

bats_require_minimum_version 1.5.0

load helpers

setup_file() {
	require_service
	export TOOLBOX="$BATS_FILE_TMPDIR/toolbox" TOOLBOX_NOJQ="$BATS_FILE_TMPDIR/toolbox-nojq" MIRROR="$BATS_FILE_TMPDIR/mirror"
	make_toolbox "$TOOLBOX" with-jq
	make_toolbox "$TOOLBOX_NOJQ" without-jq
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
	for flag in --url --pool --instance --region --api-id --ca-bundle --max-wait --force --dry-run --help; do
		assert_output_has "$flag"
	done
	for twin in VENDING_URL VENDING_POOL VENDING_INSTANCE VENDING_REGION VENDING_API_ID VENDING_CA_BUNDLE \
		VENDING_MAX_WAIT VENDING_FORCE VENDING_DRY_RUN x-apigw-api-id; do
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
		assert_output_has "/latest/${bucket}_amd64/ssm-setup-cli"
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
	mkdir -p "$SERVER_ROOT/var/lib/amazon/ssm"
	printf '{"ManagedInstanceID":"mi-0123456789abcdef0","Region":"us-east-1"}' >"$SERVER_ROOT/var/lib/amazon/ssm/registration"
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

@test "--force (and VENDING_FORCE=1) re-register with -override and a fresh activation slot" {
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	local first
	first=$(registered_id)
	run bootstrap --url "$URL" --instance "$INSTANCE" --force
	assert_status 0
	assert_output_has "--force given, registering again with a fresh activation slot"
	refute_output_has "instance=$INSTANCE"
	assert_calls_have "-override=1"
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

@test "missing jq: installs it with the distribution's package manager, then registers" {
	new_server "$BATS_TEST_TMPDIR/debian" debian12
	TOOLBOX=$TOOLBOX_NOJQ
	run bootstrap --url "$URL" --instance "$INSTANCE"
	assert_status 0
	assert_output_has "jq is not installed; installing it: apt-get install -y jq"
	assert_calls_have "apt-get -q -y -o DPkg::Lock::Timeout=120 install jq"
	assert_registered
	assert_code_not_leaked
}

@test "missing jq that cannot be installed: exit 4 with how to install it, no code fetched" {
	new_server "$BATS_TEST_TMPDIR/sles" sles15
	TOOLBOX=$TOOLBOX_NOJQ
	EXTRA_ENV=("STANDIN_PKG_FAIL=jq")
	run bootstrap --url "$STUB_URL/echo" --instance "$INSTANCE"
	assert_status 4
	assert_output_has "install it with 'zypper --non-interactive install jq'"
	[ "$(stub_requests)" -eq 0 ]
}

@test "SSM refuses the activation: exit 5, the refusal is shown" {
	run bootstrap --url "$STUB_URL/refused" --instance "$INSTANCE"
	assert_status 5
	assert_output_has "InvalidActivation"
	assert_output_has "could not register this server"
	grep -qx InvalidActivation "$SERVER_ROOT/.standin/register-errors"
	[ ! -e "$SERVER_ROOT/var/lib/amazon/ssm/registration" ]
	assert_code_not_leaked
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

@test "TLS is verified: an unknown CA fails with exit 3; --ca-bundle (or VENDING_CA_BUNDLE) with that CA succeeds" {
	run bootstrap --url "$STUB_TLS_URL/echo" --instance "$INSTANCE" --dry-run
	assert_status 3
	assert_output_has "pass --ca-bundle"
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
	run setpriv --reuid 65534 --regid 65534 --clear-groups env -i PATH=/usr/bin:/bin "$BOOTSTRAP_LINUX" --url "$URL"
	assert_status 6
	assert_output_has "must run as root"
}
