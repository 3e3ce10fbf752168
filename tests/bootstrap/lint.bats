#!/usr/bin/env bats
# Runs shellcheck over every shell script under scripts/ and tests/ (by extension or
# shebang), so `make test` fails on a new warning anywhere, not only in ours.

bats_require_minimum_version 1.5.0

load helpers

shell_scripts() {
	local file first
	while IFS= read -r -d '' file; do
		case "$file" in
		*.sh | *.bash | *.bats)
			printf '%s\n' "$file"
			continue
			;;
		esac
		IFS= read -r first <"$file" || true
		case "$first" in
		'#!'*/bash* | '#!'*/sh | '#!'*'env bash'* | '#!'*'env sh' | '#!'*bats*) printf '%s\n' "$file" ;;
		esac
	done < <(find "$REPO_ROOT/scripts" "$REPO_ROOT/tests" -type f -not -path '*/__pycache__/*' -print0 | sort -z)
}

@test "shellcheck: every shell script under scripts/ and tests/ is clean" {
	local -a files
	mapfile -t files < <(shell_scripts)
	[ "${#files[@]}" -gt 0 ]
	printf '# shellcheck: %d files\n' "${#files[@]}" >&3
	run shellcheck --external-sources --source-path=SCRIPTDIR "${files[@]}"
	[ "$status" -eq 0 ] || {
		printf '%s\n' "$output" >&2
		return 1
	}
}

@test "shellcheck: the boot script and the suite itself are among the files checked" {
	local list
	list=$(shell_scripts)
	[[ $list == *scripts/bootstrap-linux.sh* ]]
	[[ $list == *tests/bootstrap/run.sh* ]]
	[[ $list == *tests/bootstrap/standins/amazon-ssm-agent* ]]
	[[ $list == *tests/bootstrap/linux.bats* ]]
}
