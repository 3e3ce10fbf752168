#!/usr/bin/env bash
# Runs the gates on template.yaml (issue 4) and on the container deployment (issue 13),
# offline, with the tools that tests/template/setup.sh installs into .venv-tools:
#   sam validate --lint, cfn-lint and checkov (no failed check) on template.yaml;
#   cfn-lint and checkov on deploy/ecs/template.yaml; hadolint on the Dockerfile; the
#   security properties tests (pytest, each case counted: test_template_security.py and
#   test_ecs_template.py); the IAM evaluation of every AWS call the suites' `vending` made
#   against both templates' roles (tests/iam/run.sh, one gate; IAM_CALLS_DIR says where the
#   suites recorded, default target/iam-calls); the static binary the image ships (`make static`: the image's
#   target, no ELF interpreter, no shared library, runs, resolves a host name through
#   /etc/hosts and through DNS); and sam build of the Rust function (its bootstrap must be
#   an ELF for the architecture built).
# Prints "N passed, N failed" as its last line; exits non-zero if any failed.
#
# Environment:
#   TEMPLATE_BUILD_ARCH=arm64|x86_64  architecture for `sam build`. Default: arm64
#       when rustup has the aarch64-unknown-linux-gnu standard library, else
#       x86_64 (the template still deploys arm64 by default; see docs/deploy.md).
#   TEMPLATE_SKIP_BUILD=1             skip the static binary gates and sam build (counted
#       as skipped).
#   STATIC_TARGET, STATIC_TARGET_DIR  what `make static` builds and where (defaults: this
#       machine's <arch>-unknown-linux-gnu, target/static). When `sam build` builds for
#       this machine's architecture, it runs cargo-lambda with the plain cargo compiler,
#       the static build's RUSTFLAGS and this target directory: cargo finds the static
#       binary fresh, compiles nothing, and the bootstrap SAM packages is that binary.
#   CARGO_TARGET_DIR                  target directory of a `sam build` for the other
#       architecture (cargo-lambda cross-compiles with zig): default .aws-sam/cargo-target.
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
STATIC_TARGET="${STATIC_TARGET:-$(uname -m)-unknown-linux-gnu}"
STATIC_TARGET_DIR="${STATIC_TARGET_DIR:-target/static}"
case "$STATIC_TARGET_DIR" in /*) ;; *) STATIC_TARGET_DIR="$root/$STATIC_TARGET_DIR" ;; esac
static_bin="$STATIC_TARGET_DIR/$STATIC_TARGET/release/vending"
static_rustflags='-C target-feature=+crt-static'
cross_target_dir="${CARGO_TARGET_DIR:-$root/.aws-sam/cargo-target}"

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
  cfn-lint "$1" && echo "cfn-lint: no matches"
}

checkov_scan() {
  # The ECS template's Fn::ForEach makes checkov log a warning ("Failed to create a new
  # template with enriched resources"); the client ingress inside it is checked by
  # test_ecs_template.py instead.
  checkov -f "$1" --framework cloudformation --skip-download --compact --quiet
}

hadolint_scan() {
  # .hadolint.yaml: every finding fails, down to style.
  hadolint --config .hadolint.yaml Dockerfile && echo "hadolint: no findings"
}

security_tests() {
  # Each case counts as one gate; a run that reports nothing counts as one failure.
  local xml="$work/junit.xml" rc=0 counts
  python -m pytest -p no:cacheprovider -q tests/template/test_template_security.py \
    tests/template/test_ecs_template.py --junitxml="$xml" || rc=$?
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

host_arch() {
  case "$(uname -m)" in
    x86_64) echo x86_64 ;;
    aarch64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# ELF e_machine of a file as 4 hex digits (little-endian): b700 aarch64, 3e00 x86-64.
elf_machine() {
  if [[ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" != 7f454c46 ]]; then
    echo not-elf
    return 0
  fi
  od -An -tx1 -j18 -N2 "$1" | tr -d ' \n'
}

static_binary() {
  # `make static` is a no-op when the boot-script suites already built it (make test).
  echo "make static: $static_bin"
  make -s --no-print-directory -C "$root" static STATIC_TARGET="$STATIC_TARGET" \
    STATIC_TARGET_DIR="$STATIC_TARGET_DIR" || return 1
  local want machine kind
  case "$STATIC_TARGET" in
    x86_64-*) want=3e00 ;;
    aarch64-*) want=b700 ;;
    *) echo "unknown target $STATIC_TARGET" >&2; return 1 ;;
  esac
  machine="$(elf_machine "$static_bin")"
  if [[ "$machine" != "$want" ]]; then
    echo "$static_bin: ELF machine $machine, expected $want ($STATIC_TARGET)" >&2
    return 1
  fi
  # Static: no program interpreter (PT_INTERP) and no shared library needed. A static-pie
  # keeps a dynamic section for its own relocations, so file(1) may say "static-pie".
  if readelf -lW "$static_bin" | grep -q 'INTERP'; then
    echo "$static_bin has a program interpreter (dynamically linked):" >&2
    readelf -lW "$static_bin" | grep -A1 'INTERP' >&2
    return 1
  fi
  if readelf -dW "$static_bin" | grep -q '(NEEDED)'; then
    echo "$static_bin needs shared libraries:" >&2
    readelf -dW "$static_bin" | grep '(NEEDED)' >&2
    return 1
  fi
  kind="$(file -b "$static_bin")"
  case "$kind" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) echo "file(1) says: $kind" >&2; return 1 ;;
  esac
  "$static_bin" --help >/dev/null || { echo "$static_bin --help failed" >&2; return 1; }
  echo "static: $kind"
  echo "static: $(wc -c <"$static_bin") bytes, no PT_INTERP, no NEEDED, --help runs"
}

# The SDK resolves endpoints with getaddrinfo (hyper's resolver), which in a static glibc
# binary works only through the name-service modules built into libc (files and dns,
# since glibc 2.34). Prove it: in a network and mount namespace of its own, with
# distroless's nsswitch.conf ("hosts: files dns"), a resolv.conf naming a DNS server on
# the namespace's loopback and an /etc/hosts entry, the binary must reach a listener once
# by a name from /etc/hosts and once by a name only the DNS server knows.
static_dns() {
  if ! unshare --net --mount --propagation private true 2>/dev/null; then
    echo "cannot create a network and mount namespace here (unshare)" >&2
    return 1
  fi
  local etc="$work/etc"
  mkdir -p "$etc"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:2\n' >"$etc/resolv.conf"
  printf 'hosts: files dns\n' >"$etc/nsswitch.conf"
  printf '127.0.0.1 localhost\n127.0.0.1 aws-endpoint-hosts.vending.test\n' >"$etc/hosts"
  cat >"$work/resolve_check.py" <<'PYEOF'
"""Name resolution of the static binary (tests/template/run.sh, gate "static binary
resolves names"). Runs inside a network and mount namespace of its own: a DNS server for
*.vending.test (A 127.0.0.1) on the namespace's loopback port 53, and an HTTP listener that
records the Host of each request and answers with a DynamoDB-shaped error. The binary runs
`vending sweep` against http://NAME:PORT twice: NAME from /etc/hosts, then NAME only DNS
knows. Exit 0 when both requests arrived."""
import json
import socket
import socketserver
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

binary, port = sys.argv[1], 18080
hosts_seen, names_asked = [], []


class Dns(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        qid = struct.unpack(">H", data[:2])[0]
        i, labels = 12, []
        while data[i]:
            labels.append(data[i + 1 : i + 1 + data[i]].decode())
            i += 1 + data[i]
        qtype = struct.unpack(">H", data[i + 1 : i + 3])[0]
        question = data[12 : i + 5]
        name = ".".join(labels).lower()
        names_asked.append((name, qtype))
        known = name.endswith(".vending.test")
        answer = b""
        if known and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
        flags = 0x8180 if known else 0x8183  # NOERROR (AAAA: no data) / NXDOMAIN
        header = struct.pack(">HHHHHH", qid, flags, 1, 1 if answer else 0, 0, 0)
        sock.sendto(header + question + answer, self.client_address)


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        hosts_seen.append(self.headers.get("Host"))
        body = json.dumps(
            {"__type": "com.amazon.coral.validation#ValidationException", "message": "resolution check"}
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


for server in (socketserver.UDPServer(("127.0.0.1", 53), Dns), HTTPServer(("127.0.0.1", port), Http)):
    threading.Thread(target=server.serve_forever, daemon=True).start()

failures = 0
for host, via in (("aws-endpoint-hosts.vending.test", "/etc/hosts"), ("aws-endpoint-dns.vending.test", "DNS")):
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_REGION": "eu-west-1",
        # Placeholder credentials for request signing against the local listener.
        "AWS_ACCESS_KEY_ID": "AKIDRESOLUTIONCHECK",
        "AWS_SECRET_ACCESS_KEY": "placeholder",
        "AWS_EC2_METADATA_DISABLED": "true",
        "VENDING_TABLE": "resolution-check",
        "VENDING_PARAMETER_PREFIX": "/resolution-check",
        "VENDING_KMS_KEY_ID": "alias/resolution-check",
        "VENDING_INSTANCE_ROLE": "resolution-check",
    }
    before = len(hosts_seen)
    subprocess.run([binary, "sweep"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    reached = [h for h in hosts_seen[before:] if h and h.split(":")[0] == host]
    if reached:
        print(f"resolved {host} through {via} and reached the listener ({len(reached)} requests)")
    else:
        failures += 1
        print(f"{host} ({via}) was not reached; DNS questions seen: {names_asked}", file=sys.stderr)
sys.exit(1 if failures else 0)
PYEOF
  # shellcheck disable=SC2016  # expanded by the inner shell
  unshare --net --mount --propagation private bash -euo pipefail -c '
    ip link set lo up
    for f in resolv.conf nsswitch.conf hosts; do mount --bind "$1/$f" "/etc/$f"; done
    exec "$2" "$3" "$4"
  ' resolve-check "$etc" "$venv/bin/python" "$work/resolve_check.py" "$static_bin"
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
  local -a env_args
  if [[ "$arch" == "$(host_arch)" && "$STATIC_TARGET" == "$(uname -m)-unknown-linux-gnu" ]]; then
    # cargo-lambda then runs `cargo build --release --target <this machine> --bin vending`;
    # RUSTFLAGS wins over the build.rustflags it passes, so this is the `make static`
    # build, already fresh.
    env_args=(CARGO_LAMBDA_COMPILER=cargo "RUSTFLAGS=$static_rustflags" "CARGO_TARGET_DIR=$STATIC_TARGET_DIR")
  else
    env_args=("CARGO_TARGET_DIR=$cross_target_dir")
  fi
  echo "sam build --parameter-overrides Architecture=$arch (${env_args[*]}), log: $log"
  if ! env "${env_args[@]}" sam build --template template.yaml --no-cached \
    --parameter-overrides "Architecture=$arch" >"$log" 2>&1; then
    tail -n 60 "$log"
    return 1
  fi
  tail -n 12 "$log" | sed -n '/Build Succeeded/,/Built Template/p'
  if grep -q 'Compiling vending ' "$log"; then
    echo "note: sam build compiled the service (the static build was not reused)"
  fi
  local bootstrap="$root/.aws-sam/build/Function/bootstrap"
  if [[ ! -x "$bootstrap" ]]; then
    echo "no executable $bootstrap" >&2
    return 1
  fi
  machine="$(elf_machine "$bootstrap")"
  if [[ "$machine" == not-elf ]]; then
    echo "$bootstrap is not an ELF file" >&2
    return 1
  fi
  if [[ "$machine" != "$want" ]]; then
    echo "$bootstrap has ELF machine $machine, expected $want ($arch)" >&2
    return 1
  fi
  echo "bootstrap: $arch ELF, $(wc -c <"$bootstrap") bytes"
}

gate "sam validate --lint" sam_validate
gate "cfn-lint template.yaml" cfn_lint template.yaml
gate "checkov -f template.yaml" checkov_scan template.yaml
gate "cfn-lint deploy/ecs/template.yaml" cfn_lint deploy/ecs/template.yaml
gate "checkov -f deploy/ecs/template.yaml" checkov_scan deploy/ecs/template.yaml
gate "hadolint Dockerfile" hadolint_scan
echo "=== gate: security properties (pytest, each case counted)"
security_tests
gate "IAM evaluation of the suites' calls (tests/iam)" "$root/tests/iam/run.sh"
if [[ "${TEMPLATE_SKIP_BUILD:-}" == 1 ]]; then
  echo "=== skipped: static binary, its name resolution, sam build (TEMPLATE_SKIP_BUILD=1)"
  skipped=$((skipped + 3))
else
  gate "static binary (make static)" static_binary
  gate "static binary resolves names (/etc/hosts, DNS)" static_dns
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
