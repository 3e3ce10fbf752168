#!/usr/bin/env bats
# scripts/bootstrap-windows.ps1 cannot run here (no PowerShell), so it is checked
# by parsing with tree-sitter-powershell and by review rules (ps_check.py).

# PowerShell snippets are single-quoted on purpose:
# shellcheck disable=SC2016

bats_require_minimum_version 1.5.0

load helpers

ps_check() { "$TEST_PYTHON" "$BATS_TEST_DIRNAME/ps_check.py" "$@"; }

# Each line of standard input is `SED_EDIT|EXPECTED`: the edit, applied to a copy of the
# script, must change it, and the contract rules must then fail naming EXPECTED. The
# lines are read on fd 3, so that nothing the loop runs can consume them.
contract_catches_each_edit() {
	local bad="$BATS_TEST_TMPDIR/bad.ps1" edit expect
	while IFS='|' read -r -u 3 edit expect; do
		sed "$edit" "$BOOTSTRAP_WINDOWS" >"$bad"
		run ! cmp -s "$bad" "$BOOTSTRAP_WINDOWS"
		run ps_check contract "$bad"
		[ "$status" -eq 1 ] && [[ $output == *"$expect"* ]] || {
			printf 'edit %s: expected a finding "%s", got:\n%s\n' "$edit" "$expect" "$output" >&2
			return 1
		}
	done 3<&0 </dev/null
}

@test "bootstrap-windows.ps1 parses without a syntax error (tree-sitter-powershell)" {
	run ps_check parse "$BOOTSTRAP_WINDOWS"
	[ "$status" -eq 0 ] || {
		printf '%s\n' "$output" >&2
		return 1
	}
	[[ $output == *"parse ok"* ]]
}

@test "the parse check fails on deliberately broken copies" {
	local broken="$BATS_TEST_TMPDIR/broken.ps1"
	# A missing closing brace.
	awk 'BEGIN{done=0} /^function Get-DownloadBase/ {f=1} f && /^}$/ && !done {done=1; next} {print}' \
		"$BOOTSTRAP_WINDOWS" >"$broken"
	run ! cmp -s "$broken" "$BOOTSTRAP_WINDOWS"
	run ps_check parse "$broken"
	[ "$status" -eq 1 ]
	[[ $output == *"$broken:"*"syntax error"* || $output == *"$broken:"*"missing"* ]]
	# An unterminated string.
	sed "s/^\$script:Mask = '\*\*\*\*\*\*\*\*'$/\$script:Mask = '********/" "$BOOTSTRAP_WINDOWS" >"$broken"
	run ! cmp -s "$broken" "$BOOTSTRAP_WINDOWS"
	run ps_check parse "$broken"
	[ "$status" -eq 1 ]
	# A stray parenthesis in the param block.
	sed '0,/^    \[int\]\$MaxWait = 120,$/s//    [int]$MaxWait = 120),/' "$BOOTSTRAP_WINDOWS" >"$broken"
	run ! cmp -s "$broken" "$BOOTSTRAP_WINDOWS"
	run ps_check parse "$broken"
	[ "$status" -eq 1 ]
}

@test "review rules: approved verbs, 5.1 syntax, code never written out, Stop, TLS 1.2, ShouldProcess, help for every parameter" {
	run ps_check lint "$BOOTSTRAP_WINDOWS"
	[ "$status" -eq 0 ] || {
		printf '%s\n' "$output" >&2
		return 1
	}
}

@test "the review rules catch a leaked code, an unapproved verb and a PowerShell 7 construct" {
	local bad="$BATS_TEST_TMPDIR/bad.ps1"
	cp "$BOOTSTRAP_WINDOWS" "$bad"
	printf '\nfunction Fetch-Activation {\n    [CmdletBinding()]\n    param()\n    Write-Host ("code: " + $script:ActivationCode)\n    Get-Item . && Get-Item .\n}\n' >>"$bad"
	run ps_check lint "$bad"
	[ "$status" -eq 1 ]
	[[ $output == *"Fetch-Activation does not use an approved verb"* ]]
	[[ $output == *"write-host is given the activation code"* ]]
	[[ $output == *"need PowerShell 7"* ]]
}

@test "same inputs as the Linux script: parameters, environment twins, -WhatIf and -DryRun, exit codes" {
	local p
	for p in Url Pool Instance Region ApiId CaBundle MaxWait Force DryRun; do
		grep -q "^\.PARAMETER $p\$" "$BOOTSTRAP_WINDOWS"
		grep -qE "^\s+\[(string|int|switch)\]\\\$$p\b" "$BOOTSTRAP_WINDOWS"
	done
	for p in VENDING_URL VENDING_POOL VENDING_INSTANCE VENDING_REGION VENDING_API_ID VENDING_CA_BUNDLE \
		VENDING_MAX_WAIT VENDING_FORCE VENDING_DRY_RUN x-apigw-api-id Retry-After ssm-setup-cli.exe; do
		grep -q "$p" "$BOOTSTRAP_WINDOWS"
	done
	grep -q 'ShouldProcess' "$BOOTSTRAP_WINDOWS"
	grep -q 'Invoke-RestMethod' "$BOOTSTRAP_WINDOWS"
	for code in "2  usage" "3  fetch failed" "4  install failed" "5  registration failed" "6  unsupported platform"; do
		grep -q "$code" "$BOOTSTRAP_WINDOWS"
	done
	# Honest about how it was checked.
	grep -q "checked by parsing" "$BOOTSTRAP_WINDOWS"
}

# ------------------------------------------------------------ issues 8 and 9

@test "contract rules: machine id, name rules, proxy in the agent's registry Environment, online wait, clones, verified installs, ProgramW6432, own log, closed responses" {
	run ps_check contract "$BOOTSTRAP_WINDOWS"
	[ "$status" -eq 0 ] || {
		printf '%s\n' "$output" >&2
		return 1
	}
}

@test "the contract rules catch each regression on a copy" {
	contract_catches_each_edit <<'EDITS'
s/\$headers\['X-Machine-Id'\] = \$script:MachineId/$null = $script:MachineId/|X-Machine-Id
s/if (\$env:ProgramW6432) { \$env:ProgramW6432 } else { \$env:ProgramFiles }/$env:ProgramFiles/|ProgramW6432
s/            \$response\.Close()/            $null = $response/|not closed
s/-PropertyType MultiString/-PropertyType String/|registry Environment
s/'Credentials ready'/'Started'/|until its log says it connected
s/    \$instanceId = Confirm-AgentOnline -OnlineWaitSeconds \$onlineWaitSeconds/    $instanceId = Get-RegisteredInstanceId/|without having seen the agent online
s/\$recorded\.machine -ne \$script:MachineId/$false/|a clone
s/^    Stop-Bootstrap -ExitCode \$script:ExitInstall -Message ('{0}: signature is/    Write-BootstrapLog -Message ('{0}: signature is/|exit 4
s/\[ValidatePattern('^\[A-Za-z0-9_-\]{1,64}\\z')\]/[ValidatePattern('^[A-Za-z0-9._-]{1,64}\\z')]/|-Pool's ValidatePattern
s/                    400 {/                    401 {/|400 is retried
s/proxyArguments = Get-ProxyArgument -Address \$Uri/proxyArguments = @{}/|-Proxy
s/\$response = Invoke-RestMethod @request -TimeoutSec \$perTry/$response = Invoke-RestMethod -Uri $Uri -TimeoutSec $perTry/|not made from Get-ServiceRequestArgument's splat
s/^    \$values = \(.*\)'no_proxy=' + \$noProxy)/    $values = \1'x=1')/|registry Environment
EDITS
}

@test "Linux, Windows and the service accept and refuse the same instance and pool names" {
	local verdicts="$BATS_TEST_TMPDIR/linux-verdicts" patterns="$BATS_TEST_TMPDIR/patterns.json" kind name
	ps_check patterns "$BOOTSTRAP_WINDOWS" >"$patterns"
	# bootstrap-linux.sh's own checks, taken out of the script.
	# shellcheck disable=SC1090
	source <(sed -n '/^valid_instance_name() {/,/^}/p; /^valid_pool_name() {/p' "$BOOTSTRAP_LINUX")
	while IFS=$'\t' read -r kind name; do
		if "valid_${kind}_name" "$name"; then
			printf '%s\t%s\t1\n' "$kind" "$name"
		else
			printf '%s\t%s\t0\n' "$kind" "$name"
		fi
	done < <("$TEST_PYTHON" "$BATS_TEST_DIRNAME/names.py" --list) >"$verdicts"
	run "$TEST_PYTHON" "$BATS_TEST_DIRNAME/names.py" "$patterns" "$verdicts"
	[ "$status" -eq 0 ] || {
		printf '%s\n' "$output" >&2
		return 1
	}
	[[ $output == *"0 disagreements"* ]]
}

@test "same new inputs as the Linux script: -Proxy, -NoProxy, -OnlineWait, -AllowUnverified, -PrepareImage and their twins" {
	local p
	for p in Proxy NoProxy OnlineWait AllowUnverified PrepareImage; do
		grep -q "^\.PARAMETER $p\$" "$BOOTSTRAP_WINDOWS"
		grep -qE "^\s+\[(string|int|switch)\]\\\$$p\b" "$BOOTSTRAP_WINDOWS"
	done
	for p in VENDING_PROXY VENDING_NO_PROXY VENDING_ONLINE_WAIT VENDING_ALLOW_UNVERIFIED VENDING_PREPARE_IMAGE; do
		grep -q "$p" "$BOOTSTRAP_WINDOWS"
		grep -q "$p" "$BOOTSTRAP_LINUX"
	done
}

# ------------------------------------------------------------ issue 10

@test "a pool's verdict (404 PoolNotFound, 403 PoolDisabled or Forbidden, 500 PoolMisconfigured) is final and names the pool and the reason; the rules catch each regression" {
	grep -q "'403:Forbidden'" "$BOOTSTRAP_WINDOWS"
	grep -q 'not retried' "$BOOTSTRAP_WINDOWS"
	contract_catches_each_edit <<'EDITS'
/'500:PoolMisconfigured'/d|500:PoolMisconfigured is not a final verdict
s/'403:PoolDisabled'/'403:Disabled'/|403:PoolDisabled is not a final verdict
/'404:PoolNotFound'/d|404:PoolNotFound is not a final verdict
s/\$result\.Code = \$Matches\[1\]/$null = $Matches[1]/|the error body's code is not read
s/                    Stop-Bootstrap -ExitCode \$script:ExitFetch -Message ('pool ''{0}''/                    Write-BootstrapLog -Message ('pool ''{0}''/|does not stop with exit 3
s/-f \$poolLabel, \$verdict\.Reason, \$failure\.Status, \$failure\.Code, \$detail/-f 'x', $verdict.Reason, $failure.Status, $failure.Code, $detail/|does not name the pool
s/ -PoolName \$settings\.Pool//|not told the pool's name
EDITS
}

# ---------------------------------------------------- issues 18 (item 8) and 19

@test "checks end at \\z (a trailing newline is no longer accepted), Pool and ExpirationDate are validated before they are logged; the rules catch each regression" {
	grep -q "'^\[A-Za-z0-9_-\]{1,64}\\\\z'" "$BOOTSTRAP_WINDOWS"
	local anchored
	anchored=$(grep -nE "'\^[^']*\\\$'" "$BOOTSTRAP_WINDOWS" | grep -v '(?m)' || true)
	[ -z "$anchored" ] || {
		printf 'anchored with $:\n%s\n' "$anchored" >&2
		return 1
	}
	contract_catches_each_edit <<'EDITS'
s/'\^\[0-9\]{1,5}\\z'/'^[0-9]{1,5}$'/|accepts a trailing newline
/if (\$activationPool -cnotmatch/d|$activationPool from the service is logged without being validated
/if (\$expires -cnotmatch/d|$expires from the service is logged without being validated
EDITS
}

@test "issue 19: the Windows script judges from the agent itself; the rules catch each regression on a copy" {
	contract_catches_each_edit <<'EDITS'
s/    if ((Get-AgentIdentity) -ne \$fileId) {/    if ($false) {/|a registration file alone is taken for a registration
s/    if (\$fileId -ne \$agentId) {/    if ($false) {/|not removed before registering afresh
s/Write-Output ('refused: {0}' -f \$refusal)/$null = $refusal/|print 'refused: <Code>'
s/Stop-FailedRegistration -ExitCode \$exitCode -What 'ssm-setup-cli'/Stop-Bootstrap -ExitCode $exitCode -Message 'ssm-setup-cli'/|a registration failure exits without
s/-Path \$script:WorkerLog/-Path $script:AgentLog/|ssm-agent-worker.log
s/ -TimeoutSeconds \$script:RegisterTimeoutSeconds)/)/|without a timeout
s/\$signerName -ceq \$script:AgentSignerName/$signer -match 'Amazon'/|exact CN
s/\$exitCode -eq 3010/$exitCode -eq 0/|3010
/Remove-Item -LiteralPath \$log -Force/d|outlives the installer
s/Stop-Bootstrap -ExitCode \$script:ExitPlatform -Message 'no SSM Agent build for Windows on ARM64[^']*'/return 'windows_arm64'/|ARM64
/return (\$Text -replace '(\[A-Za-z\]/c\    return $Text|proxy credentials
EDITS
}

# ------------------------------------------------------------------ issue 22

@test "issue 22: the registration is reported (warning only), -Force names itself, a healable refusal is reported then the vend asked once more; the rules catch each regression" {
	grep -q "confirmed: {0} (Name={1}; replaced: {2})" "$BOOTSTRAP_WINDOWS"
	contract_catches_each_edit <<'EDITS'
/^        Confirm-Registration -Uri \$reportUri -InstanceId \$registered/d|the registration is not reported
s/\$base = \$base + '\/registrations'/$base = $base + '\/activation'/|the report does not go to
/^function Get-ServiceRequestArgument/,/^}/s/\$headers\['X-Machine-Id'\] = \$script:MachineId/$null = 1/|with X-Machine-Id
s/\$request\['ContentType'\] = 'application\/json'/$null = 1/|the report is not a JSON POST
s/ -JsonBody \$json / /|the report is not a JSON POST
s/\$body\['Instance'\] = \$InstanceName/$null = $InstanceName/|does not name the instance
s/if (\$InstanceId -cnotmatch '^mi-\[0-9a-f\]{17}\\z' -or /if (/|values are not checked
s/^    Write-BootstrapLog -Message ('WARNING: {0} ({1})' -f \$What, \$lastError)/    Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('{0} ({1})' -f $What, $lastError)/|a failed report fails the boot
s/^    } catch {$/    } finally {/|a failed report fails the boot
s/ActivationId = \$ActivationId; Error = \$Refusal }/ActivationId = $ActivationId; Error = $Refusal; Code = $script:ActivationCode }/|a report carries the activation code
s/^\$script:ReportWaitSeconds = 6$/$script:ReportWaitSeconds = 120/|not bounded to a few seconds
s/-InstanceName \$settings\.Instance$/-InstanceName $(if ($isForce) { '' } else { $settings.Instance })/|-Force (or a stale registration file) vends without the instance name
s/, 'RegistrationLimitExceeded')$/)/|are not told apart
s/^        \$script:RefusalRetry = \$false$/        $null = 1/|retried more than once
/^            Send-RefusalReport -Uri \$reportUri/d|not reported before the vend is asked for again
s/} while (\$script:Refused -and \$vends -lt 2)/} while ($false)/|exactly one more vend and registration
EDITS
}
