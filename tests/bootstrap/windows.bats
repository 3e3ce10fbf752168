#!/usr/bin/env bats
# scripts/bootstrap-windows.ps1 cannot run here (no PowerShell), so it is checked
# by parsing with tree-sitter-powershell and by review rules (ps_check.py).

# PowerShell snippets are single-quoted on purpose:
# shellcheck disable=SC2016

bats_require_minimum_version 1.5.0

load helpers

ps_check() { "$TEST_PYTHON" "$BATS_TEST_DIRNAME/ps_check.py" "$@"; }

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
