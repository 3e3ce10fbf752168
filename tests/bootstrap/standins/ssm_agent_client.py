"""The SSM Agent's side of its protocol with SSM, for the stand-ins and the emulator tests.

Each step is the agent's (aws/amazon-ssm-agent; file:line of its source in brackets),
spoken over HTTP to the endpoint the agent's Ssm.Endpoint would name (the emulator):

  register   what `amazon-ssm-agent -register -code C -id I -region R` does
             [core/agent_parser.go:196-270 registerManagedInstance]: a fresh RSA-2048
             key [agent/managedInstances/registration/instance_info.go:167
             GenerateKeyPair, agent/managedInstances/auth/rsa_key.go:40-60]; the vault's
             identity is OVERWRITTEN with an empty instance ID and the new private key
             BEFORE SSM is asked [core/agent_parser.go:204 UpdateServerInfo("", "", "",
             privateKey...)], so a refusal leaves the agent with no identity; the hardware
             fingerprint [instance_info.go:89 Fingerprint, kept in the vault under
             InstanceFingerprint, fingerprint/fingerprint.go:44]; then the unsigned
             RegisterManagedInstance [agent/ssm/anonauth/anonauth_client.go:95-120]; on
             success the vault gets the instance ID and region [core/agent_parser.go:248],
             then the registration file is written as a copy [core/agent_parser.go:253-266].
  checkin    what the core agent and its worker do at start: RequestManagedInstanceRoleToken
             signed with the vault's key [agent/ssm/rsaauth/rsa_client.go:26-46,
             ssm_rsaV4.go:121-155]; only then "Credentials ready"
             [core/app/credentialrefresher/credentialrefresher.go:196]; then the worker's
             UpdateInstanceInformation with those credentials (SigV4).

The vault is a directory laid out as the agent's file vault [agent/managedInstances/
vault/fsvault/fsvault.go:30-32]: VAULT/Manifest and VAULT/Store/RegistrationKey, the
latter the JSON of instanceInfo [instance_info.go:31-40]: instanceID, region,
privateKey (base64 PKCS#1 DER), privateKeyType.
`serve SOCKET` answers the same steps over a Unix socket (the stand-ins use it when
STANDIN_AGENT_SOCKET names one: tests/bootstrap/run.sh starts it), so a boot storm's
servers do not each pay for Python's start; the steps and their answers are the same.
Exit codes: 0 done; 1 refused or failed (message on stdout, as the agent logs it);
3 no identity. (What `ssm-cli get-instance-information` reads, the vault's instanceID,
the stand-ins read in bash: _common.bash vault_instance_id.)
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import http.server
import io
import json
import os
import socketserver
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, TextIO

AGENT_VERSION = "3.3.0.0"


class SsmError(Exception):
    def __init__(self, code: str, message: str, status: int, request_id: str) -> None:
        # The aws-sdk-go error string the agent logs: "Code: message\n\tstatus code: N, request id: R".
        super().__init__(f"{code}: {message}\n\tstatus code: {status}, request id: {request_id}")
        self.code = code


# ------------------------------------------------------------------------- the vault


def vault_read(vault: Path) -> dict[str, Any]:
    try:
        data = json.loads((vault / "Store" / "RegistrationKey").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def vault_store(vault: Path, key: str, value: dict[str, Any]) -> None:
    store = vault / "Store"
    store.mkdir(parents=True, exist_ok=True)
    path = store / key
    path.write_text(json.dumps(value))
    path.chmod(0o600)
    manifest_path = vault / "Manifest"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    manifest[key] = str(path)
    manifest_path.write_text(json.dumps(manifest))


def fingerprint(vault: Path) -> str:
    """The machine's fingerprint: made once, then kept in the vault."""
    path = vault / "Store" / "InstanceFingerprint"
    try:
        return str(json.loads(path.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        value = str(uuid.uuid4())
        vault_store(vault, "InstanceFingerprint", {"fingerprint": value, "similarityThreshold": 40})
        return value


# ---------------------------------------------------------------------- the wire


def _post(endpoint: str, target: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(endpoint.rstrip("/") + "/", data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")  # type: ignore[no-any-return]
    except urllib.error.HTTPError as err:
        try:
            payload = json.loads(err.read() or b"{}")
        except ValueError:
            payload = {}
        code = str(payload.get("__type", "UnknownError")).rsplit("#", 1)[-1]
        raise SsmError(code, str(payload.get("message", payload.get("Message", ""))), err.code, err.headers.get("x-amzn-RequestId", ""))


def _base_headers(endpoint: str, target: str, when: dt.datetime) -> dict[str, str]:
    return {
        "Host": urllib.parse.urlsplit(endpoint).netloc,
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": target,
        "X-Amz-Date": when.strftime("%Y%m%dT%H%M%SZ"),
    }


def _string_to_sign(headers: dict[str, str], body: bytes, scope: str) -> tuple[str, str]:
    """(signed headers, string to sign) as SigV4 lays them out [agent/ssm/rsaauth/v4.go:315-391]."""
    names = sorted(h.lower() for h in headers)
    values = {h.lower(): " ".join(v.split()) for h, v in headers.items()}
    canonical = "\n".join(["POST", "/", "", "".join(f"{n}:{values[n]}\n" for n in names), ";".join(names), hashlib.sha256(body).hexdigest()])
    return ";".join(names), "\n".join(["AWS4-HMAC-SHA256", headers["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()])


def _signed_post(endpoint: str, target: str, body: dict[str, Any], access_key: str, region: str, service: str, sign: Any, token: str = "") -> dict[str, Any]:
    when = dt.datetime.now(dt.timezone.utc)
    headers = _base_headers(endpoint, target, when)
    if token:
        headers["X-Amz-Security-Token"] = token
    scope = f"{when:%Y%m%d}/{region}/{service}/aws4_request"
    data = json.dumps(body).encode()
    signed, string_to_sign = _string_to_sign(headers, data, scope)
    headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={sign(string_to_sign, f'{when:%Y%m%d}')}"
    return _post(endpoint, target, body, headers)


# ------------------------------------------------------------------- the steps


def register(endpoint: str, vault: Path, code: str, activation_id: str, region: str) -> str:
    from cryptography.hazmat.primitives import serialization  # imported where needed
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = base64.b64encode(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())).decode()
    public = base64.b64encode(key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    # The agent blanks its identity before it asks SSM [core/agent_parser.go:204].
    vault_store(vault, "RegistrationKey", {"instanceID": "", "region": "", "privateKey": private, "privateKeyType": "Rsa"})
    body = {"ActivationCode": code, "ActivationId": activation_id, "PublicKey": public, "PublicKeyType": "Rsa", "Fingerprint": fingerprint(vault)}
    answer = _post(endpoint, "AmazonSSM.RegisterManagedInstance", body, _base_headers(endpoint, "AmazonSSM.RegisterManagedInstance", dt.datetime.now(dt.timezone.utc)))
    instance_id = str(answer["InstanceId"])
    vault_store(vault, "RegistrationKey", {"instanceID": instance_id, "region": region, "privateKey": private, "privateKeyType": "Rsa"})
    return instance_id


def role_token(endpoint: str, vault: Path) -> dict[str, Any]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    identity = vault_read(vault)
    key = serialization.load_der_private_key(base64.b64decode(identity["privateKey"]), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)

    def sign(text: str, _date: str) -> str:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)  # saltSize [auth/rsa_key.go:30]
        return base64.b64encode(key.sign(text.encode(), pss, hashes.SHA256())).decode()

    return _signed_post(endpoint, "AmazonSSM.RequestManagedInstanceRoleToken", {"Fingerprint": fingerprint(vault)}, identity["instanceID"], identity["region"], "ssm", sign)


def worker_call(endpoint: str, target: str, body: dict[str, Any], creds: dict[str, Any], region: str, service: str = "ssm") -> dict[str, Any]:
    def sign(text: str, date: str) -> str:
        key = hmac.new(("AWS4" + creds["SecretAccessKey"]).encode(), date.encode(), hashlib.sha256).digest()
        for part in (region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    return _signed_post(endpoint, target, body, creds["AccessKeyId"], region, service, sign, creds.get("SessionToken", ""))


def check_in(endpoint: str, vault: Path, info: dict[str, str]) -> None:
    identity = vault_read(vault)
    creds = role_token(endpoint, vault)
    body = {"InstanceId": identity["instanceID"], "AgentName": "amazon-ssm-agent", "AgentVersion": AGENT_VERSION, "AgentStatus": "Active", **info}
    worker_call(endpoint, "AmazonSSM.UpdateInstanceInformation", body, creds, identity["region"])


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """One step, as `python3 ssm_agent_client.py STEP ...` runs it (or the `serve` daemon, per request)."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("register", "checkin"))
    parser.add_argument("--endpoint", default=os.environ.get("STANDIN_EMULATOR_URL", ""))
    parser.add_argument("--vault", required=True, type=Path)
    parser.add_argument("--id", default="")
    parser.add_argument("--region", default="")
    parser.add_argument("--info", default="{}", help="JSON: ComputerName, PlatformType, PlatformName, PlatformVersion, IPAddress")
    parser.add_argument("--computer-name", help="checkin: the info of a Rocky Linux 9.4 server of this name (instead of --info)")
    parser.add_argument("--registration", type=Path, help="register: the registration file the agent writes on success")
    args = parser.parse_args(argv)
    identity = vault_read(args.vault)
    try:
        if args.step == "register":
            code = stdin.readline().rstrip("\n")  # never on the command line of this helper
            instance_id = register(args.endpoint, args.vault, code, args.id, args.region)
            if args.registration:  # the agent's copy [core/agent_parser.go:253-266]
                args.registration.parent.mkdir(parents=True, exist_ok=True)
                args.registration.write_text(json.dumps({"ManagedInstanceID": instance_id, "Region": args.region}, separators=(",", ":")) + "\n")
            print(instance_id, file=out)
            return 0
        if not identity.get("instanceID"):
            print("failed to get identity: failed to find agent identity", file=out)
            return 3
        info = json.loads(args.info)
        if args.computer_name is not None:
            info = {"ComputerName": args.computer_name, "PlatformType": "Linux", "PlatformName": "Rocky Linux", "PlatformVersion": "9.4"}
        check_in(args.endpoint, args.vault, info)
        return 0
    except SsmError as err:
        print(str(err), file=out)
        return 1
    except (OSError, urllib.error.URLError) as err:
        print(f"RequestError: send request failed caused by: {err}", file=out)
        return 1


# ------------------------------------------------------------------- the daemon


class _StepHandler(http.server.BaseHTTPRequestHandler):
    """POST /run: the body's first line is the step's standard input (the code, or empty),
    the other lines its arguments; the answer is the exit status on the first line, then
    what the step printed. The same main() as a process runs, without a process."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        lines = body.removesuffix("\n").split("\n")
        out = io.StringIO()
        try:
            rc = main(lines[1:], io.StringIO(lines[0] + "\n"), out)
        except SystemExit as exit_:  # argparse refusing the arguments
            rc = exit_.code if isinstance(exit_.code, int) else 2
        except Exception as err:  # noqa: BLE001 (a stand-in's own bug: reported, never a hang)
            rc, out = 70, io.StringIO(f"stand-in error: {type(err).__name__}: {err}\n")
        answer = f"{rc}\n{out.getvalue()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass  # requests carry the code: nothing logged


class _StepServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 1024  # a boot storm connects all at once


def serve(socket_path: str) -> None:
    """Answers steps over a Unix socket until killed: a storm's servers then pay for the
    protocol's work (keys, signatures, HTTP), not for a Python start per step."""
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    with _StepServer(socket_path, _StepHandler) as server:
        server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    sys.exit(main())
