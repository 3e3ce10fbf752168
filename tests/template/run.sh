#!/usr/bin/env bash
# Runs the gates on template.yaml (issue 4), offline, with the tools that
# tests/template/setup.sh installs into .venv-tools:
#   sam validate --lint, cfn-lint, checkov (no failed check), the security
#   properties test (pytest, each case counted), and sam build of the Rust
#   function (its bootstrap must be an ELF for the architecture built).
# Prints "N passed, N failed" as its last line; exits non-zero if any failed.
#
# Environment:
#   TEMPLATE_BUILD_ARCH=arm64|x86_64  architecture for `sam build`. Default: arm64
#       when rustup has the aarch64-unknown-linux-gnu standard library, else
#       x86_64 (the template still deploys arm64 by default; see README, Deploy).
#   TEMPLATE_SKIP_BUILD=1             skip the sam build gate (counted as skipped).
#   CARGO_TARGET_DIR                  default .aws-sam/cargo-target, apart from the
#       workspace's target/ so a release build never contends with `cargo test`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="$root/.venv-tools"
if [[ ! -x "$venv/bin/sam" ]]; then
  echo "run.sh: $venv has no sam; run tests/template/setup.sh first" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

export PATH="$venv/bin:$PATH"
export SAM_CLI_TELEMETRY=0            # no network calls from SAM CLI
export BC_SKIP_MAPPING=TRUE           # checkov: no call to its vendor's servers
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-eu-west-1}"  # SAM translator needs one; nothing is called
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/.aws-sam/cargo-target}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
skipped=0
failures=()

gate() {
  local name=$1
  shift
  echo "=== gate: $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "=== ok: $name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "=== FAILED: $name"
  fi
}

sam_validate() {
  sam validate --lint --template template.yaml
}

cfn_lint() {
  # Exit status is non-zero on any error, warning or informational match.
  cfn-lint template.yaml && echo "cfn-lint: no matches"
}

checkov_scan() {
  checkov -f template.yaml --framework cloudformation --skip-download --compact --quiet
}

security_tests() {
  # Each case counts as one gate; a run that reports nothing counts as one failure.
  local xml="$work/junit.xml" rc=0 counts
  python -m pytest -p no:cacheprovider -q tests/template/test_template_security.py \
    --junitxml="$xml" || rc=$?
  if [[ ! -s "$xml" ]]; then
    failed=$((failed + 1))
    failures+=("security tests (no report, pytest exit $rc)")
    return 0
  fi
  counts="$(python - "$xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
total = sum(int(s.get("tests", 0)) for s in suites)
bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skip = sum(int(s.get("skipped", 0)) for s in suites)
print(total - bad - skip, bad if total else 1, skip)
EOF
)"
  local p f s
  read -r p f s <<<"$counts"
  passed=$((passed + p))
  failed=$((failed + f))
  skipped=$((skipped + s))
  if ((f > 0 || rc != 0)); then
    failures+=("security tests ($f failed, pytest exit $rc)")
  fi
  echo "=== security tests: $p passed, $f failed"
}

build_arch() {
  if [[ -n "${TEMPLATE_BUILD_ARCH:-}" ]]; then
    echo "$TEMPLATE_BUILD_ARCH"
  elif command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    echo arm64
  else
    echo x86_64
  fi
}

sam_build() {
  local arch log="$root/.aws-sam/sam-build.log" machine want
  arch="$(build_arch)"
  case "$arch" in
    arm64) want=b700 ;;   # ELF e_machine EM_AARCH64 (0xb7), little-endian
    x86_64) want=3e00 ;;  # EM_X86_64 (0x3e)
    *) echo "TEMPLATE_BUILD_ARCH must be arm64 or x86_64, not $arch" >&2; return 1 ;;
  esac
  if [[ "$arch" == x86_64 && -z "${TEMPLATE_BUILD_ARCH:-}" ]]; then
    echo "note: rustup has no aarch64-unknown-linux-gnu standard library here, so this"
    echo "      gate builds x86_64 (Architecture=x86_64); the template deploys arm64."
  fi
  mkdir -p "$root/.aws-sam"
  echo "sam build --parameter-overrides Architecture=$arch (CARGO_TARGET_DIR=$CARGO_TARGET_DIR), log: $log"
  if ! sam build --template template.yaml --no-cached \
    --parameter-overrides "Architecture=$arch" >"$log" 2>&1; then
    tail -n 60 "$log"
    return 1
  fi
  tail -n 12 "$log" | sed -n '/Build Succeeded/,/Built Template/p'
  local bootstrap="$root/.aws-sam/build/Function/bootstrap"
  if [[ ! -x "$bootstrap" ]]; then
    echo "no executable $bootstrap" >&2
    return 1
  fi
  if [[ "$(head -c 4 "$bootstrap" | od -An -tx1 | tr -d ' \n')" != 7f454c46 ]]; then
    echo "$bootstrap is not an ELF file" >&2
    return 1
  fi
  machine="$(od -An -tx1 -j18 -N2 "$bootstrap" | tr -d ' \n')"
  if [[ "$machine" != "$want" ]]; then
    echo "$bootstrap has ELF machine $machine, expected $want ($arch)" >&2
    return 1
  fi
  echo "bootstrap: $arch ELF, $(wc -c <"$bootstrap") bytes"
}

gate "sam validate --lint" sam_validate
gate "cfn-lint template.yaml" cfn_lint
gate "checkov -f template.yaml" checkov_scan
echo "=== gate: security properties (pytest, each case counted)"
security_tests
if [[ "${TEMPLATE_SKIP_BUILD:-}" == 1 ]]; then
  echo "=== skipped: sam build (TEMPLATE_SKIP_BUILD=1)"
  skipped=$((skipped + 1))
else
  gate "sam build" sam_build
fi

echo
if ((failed > 0)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
if ((skipped > 0)); then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
((failed == 0))
