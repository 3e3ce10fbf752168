#!/usr/bin/env bats
# Boot storm: BOOTSTRAP_STORM_SERVERS (default 200) simulated servers, each a
# separate process with its own filesystem root, run scripts/bootstrap-linux.sh at
# the same moment against the `vending serve` processes run.sh started (2, with
# VENDING_REGISTRATION_LIMIT=25), spread round-robin over them. Every server must
# register through the emulator, none may be refused with
# RegistrationLimitExceeded, and no activation may hold more registrations than
# its limit. Prints how many activations were created and the slowest server.

# EXTRA_ENV is read by helpers.bash:
# shellcheck disable=SC2034

bats_require_minimum_version 1.5.0

load helpers

setup_file() {
	require_service
	export TOOLBOX="$BATS_FILE_TMPDIR/toolbox" MIRROR="$BATS_FILE_TMPDIR/mirror"
	make_toolbox "$TOOLBOX"
	make_signing_key "$BATS_FILE_TMPDIR"
	make_mirror "$MIRROR"
}

# One simulated server: writes "<exit status> <milliseconds>" to $dir/result.
boot_one() { # DIR URL INSTANCE DISTRO
	local dir=$1 url=$2 instance=$3 distro=$4 start end rc=0
	new_server "$dir/root" "$distro"
	EXTRA_ENV=("STANDIN_INSTANCE_NAME=$instance")
	start=$(date +%s%N)
	bootstrap --url "$url" --instance "$instance" --max-wait 240 >"$dir/log" 2>&1 || rc=$?
	end=$(date +%s%N)
	printf '%s %s\n' "$rc" "$(((end - start) / 1000000))" >"$dir/result"
}

@test "boot storm: every server registers, none beyond an activation's limit" {
	local n=${BOOTSTRAP_STORM_SERVERS:-200} i dir url distro
	local -a urls distros=(rocky9 ubuntu2204 amzn2023 debian12 sles15 rhel9 alma9 amzn2)
	IFS=, read -r -a urls <<<"${BOOTSTRAP_TEST_VENDING_URLS:-$BOOTSTRAP_TEST_VENDING_URL}"
	local run_id="storm-$$-$RANDOM"
	local created_before
	created_before=$(emulator_calls SSM.CreateActivation)

	local started
	started=$(date +%s%N)
	for ((i = 1; i <= n; i++)); do
		dir="$BATS_TEST_TMPDIR/server-$i"
		mkdir -p "$dir"
		url=${urls[$((i % ${#urls[@]}))]}
		distro=${distros[$((i % ${#distros[@]}))]}
		boot_one "$dir" "$url" "$run_id-$i" "$distro" &
	done
	wait
	local wall_ms=$((($(date +%s%N) - started) / 1000000))
	local created_after
	created_after=$(emulator_calls SSM.CreateActivation)

	# Outcomes.
	local ok=0 failed=0 slowest=0 slowest_server='' limit_exceeded=0 retried=0 rc ms
	local -a times=()
	for ((i = 1; i <= n; i++)); do
		dir="$BATS_TEST_TMPDIR/server-$i"
		read -r rc ms <"$dir/result"
		times+=("$ms")
		if [ "$rc" = 0 ]; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
		if [ "$ms" -gt "$slowest" ]; then
			slowest=$ms
			slowest_server=$i
		fi
		if grep -qs RegistrationLimitExceeded "$dir/root/.standin/register-errors"; then
			limit_exceeded=$((limit_exceeded + 1))
		fi
		if grep -q "retrying in" "$dir/log"; then retried=$((retried + 1)); fi
	done
	local median
	median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((n + 1) / 2))p")

	# Every registration is real: distinct managed instance IDs, and each
	# activation used holds no more registrations than its limit.
	cat "$BATS_TEST_TMPDIR"/server-*/root/.standin/registrations >"$BATS_TEST_TMPDIR/registrations" 2>/dev/null || true
	local distinct_instances activations_used
	distinct_instances=$(cut -d' ' -f1 "$BATS_TEST_TMPDIR/registrations" | sort -u | grep -c . || true)
	activations_used=$(cut -d' ' -f2 "$BATS_TEST_TMPDIR/registrations" | sort -u | grep -c . || true)
	local over_limit
	over_limit=$(cut -d' ' -f2 "$BATS_TEST_TMPDIR/registrations" | sort -u |
		"$TEST_PYTHON" "$BATS_TEST_DIRNAME/activation_usage.py" "$BOOTSTRAP_TEST_EMULATOR_URL" "$BATS_TEST_TMPDIR/usage.txt")

	local created=$((created_after - created_before))
	local summary
	summary=$(printf 'boot storm: %d/%d servers registered (%d distinct managed instances) in %d.%ds over %d vending server(s); %d RegistrationLimitExceeded; %d activation(s) created, %d used; slowest server %d.%03ds (#%s), median %d.%03ds; %d server(s) retried after 503/errors' \
		"$ok" "$n" "$distinct_instances" $((wall_ms / 1000)) $((wall_ms % 1000 / 100)) "${#urls[@]}" "$limit_exceeded" \
		"$created" "$activations_used" $((slowest / 1000)) $((slowest % 1000)) "$slowest_server" \
		$((median / 1000)) $((median % 1000)) "$retried")
	printf '# %s\n' "$summary" >&3
	sed 's/^/#   /' "$BATS_TEST_TMPDIR/usage.txt" >&3
	printf '%s\n' "$summary" >"${BOOTSTRAP_STORM_REPORT:-/dev/null}"

	if [ "$failed" -gt 0 ]; then
		for ((i = 1; i <= n; i++)); do
			read -r rc ms <"$BATS_TEST_TMPDIR/server-$i/result"
			if [ "$rc" != 0 ]; then
				printf -- '--- server %d failed (exit %s) ---\n' "$i" "$rc" >&2
				tail -n 15 "$BATS_TEST_TMPDIR/server-$i/log" >&2
				break
			fi
		done
	fi
	[ "$ok" -eq "$n" ]
	[ "$distinct_instances" -eq "$n" ]
	[ "$limit_exceeded" -eq 0 ]
	[ "$over_limit" -eq 0 ]
	[ "$created" -ge 1 ]
}
