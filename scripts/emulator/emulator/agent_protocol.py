"""The SSM Agent's own calls at the emulator's SSM endpoint (app.py routes them here).

What `amazon-ssm-agent` says to SSM, on the wire as the agent says it (aws/amazon-ssm-agent,
read with the `fetch` tool; file:line of its source in brackets):

  * RegisterManagedInstance [agent/ssm/anonauth/anonauth_client.go:71-120]: POST / with
    X-Amz-Target AmazonSSM.RegisterManagedInstance, JSON 1.1, UNSIGNED (anonymous
    credentials), body {"ActivationCode", "ActivationId", "PublicKey" (base64 DER
    SubjectPublicKeyInfo of an RSA-2048 key [agent/managedInstances/auth/rsa_key.go]),
    "PublicKeyType": "Rsa", "Fingerprint"}; answer {"InstanceId": "mi-..."}.
    Validated as SSM's model does [extra/aws-sdk-go/service/ssm/api.go, Validate of
    RegisterManagedInstanceInput]: ActivationCode 20..250 characters, ActivationId a
    UUID, PublicKey at least 392 characters and an RSA public key, PublicKeyType Rsa,
    Fingerprint present (ValidationException, never echoing the code). Refusals as SSM
    refuses: InvalidActivation (unknown, deleted or wrong code), ActivationExpired,
    RegistrationLimitExceeded. A success counts against the activation's limit and
    creates the managed node with the activation's tags, IamRole, ActivationId,
    RegistrationDate = now and PingStatus ConnectionLost: it is not Online until the
    agent checks in. The node keeps the public key and the fingerprint.
  * RequestManagedInstanceRoleToken {"Fingerprint"} [agent/ssm/authtokenrequest/
    authtokenrequest_client.go, agent/ssm/rsaauth/]: signed as SigV4 lays the request
    out, with Credential=<mi-ID>/<date>/<region>/ssm/aws4_request, but the Signature is
    base64 RSA-PSS-SHA256 of the string to sign with the node's private key
    [agent/ssm/rsaauth/ssm_rsaV4.go:147-155, auth/rsa_key.go Sign]. Verified against the
    registered public key: no or malformed Authorization is
    MissingAuthenticationTokenException; a node that is unknown or deregistered
    AccessDeniedException (what the core's credential refresher backs off on
    [core/app/credentialrefresher/credentialrefresher.go:233]); a signature that does
    not verify InvalidSignatureException; another Fingerprint MachineFingerprintDoesNotMatch.
    Answer {"AccessKeyId", "SecretAccessKey", "SessionToken", "TokenExpirationDate"
    (1 hour), "UpdateKeyPair": false}: credentials of the node, valid for its worker.
  * UpdateInstanceInformation (the worker's health ping), signed with those credentials
    (plain SigV4 HMAC-SHA256, verified; an unknown key is UnrecognizedClientException, a
    bad signature InvalidSignatureException, another node's InstanceId
    AccessDeniedException): the node becomes Online with LastPingDateTime = now and
    the ComputerName, PlatformType/Name/Version, AgentVersion and IPAddress it sends, as
    DescribeInstanceInformation then shows.
  * Quiet empty answers, for signed calls of a registered node, to the worker's polling:
    ec2messages (X-Amz-Target EC2WindowsMessageDeliveryService.GetMessages: no message;
    AcknowledgeMessage, SendReply, FailMessage, DeleteMessage: {}), and SSM's
    ListInstanceAssociations ({"Associations": []}), UpdateInstanceAssociationStatus,
    PutInventory and PutComplianceItems ({}). Other calls go to moto as before.

Point the real agent here with "Ssm": {"Endpoint": "http://127.0.0.1:PORT"} (and "Mds":
{"Endpoint": ...} for ec2messages) in amazon-ssm-agent.json.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, quote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SSM_PREFIX = "AmazonSSM."
MESSAGES_PREFIX = "EC2WindowsMessageDeliveryService."
QUIET = {
    "AmazonSSM.ListInstanceAssociations": {"Associations": []},
    "AmazonSSM.UpdateInstanceAssociationStatus": {},
    "AmazonSSM.PutInventory": {},
    "AmazonSSM.PutComplianceItems": {},
    "EC2WindowsMessageDeliveryService.AcknowledgeMessage": {},
    "EC2WindowsMessageDeliveryService.SendReply": {},
    "EC2WindowsMessageDeliveryService.FailMessage": {},
    "EC2WindowsMessageDeliveryService.DeleteMessage": {},
}
TARGETS = {
    "AmazonSSM.RegisterManagedInstance",
    "AmazonSSM.RequestManagedInstanceRoleToken",
    "AmazonSSM.UpdateInstanceInformation",
    "EC2WindowsMessageDeliveryService.GetMessages",
} | set(QUIET)
ACTIVATION_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
AUTHORIZATION = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/,\s]+)/([^,\s]+), ?SignedHeaders=([^,\s]+), ?Signature=(\S+)$")
TOKEN_LIFETIME = dt.timedelta(hours=1)
INFO_FIELDS = {
    "ComputerName": "computer_name",
    "PlatformType": "platform_type",
    "PlatformName": "platform_name",
    "PlatformVersion": "platform_version",
    "AgentVersion": "agent_version",
    "IPAddress": "ip_address",
}


class Refused(Exception):
    """An SSM error: code, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


@dataclass
class Ssm:
    """What this module needs of the emulator's SSM state (app.py passes it in)."""

    find_activation: Callable[[str], Any]  # activation ID -> (backend, Activation) | None
    new_node: Callable[[Any, Any], Any]  # (backend, Activation) -> ManagedNode, stored and tagged
    find_node: Callable[[str], Any]  # instance ID -> (backend, ManagedNode) | None


@dataclass
class Credentials:
    instance_id: str
    secret: str
    expires: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _validation(field: str, constraint: str) -> Refused:
    return Refused("ValidationException", f"1 validation error detected: Value at '{field}' failed to satisfy constraint: {constraint}")


class AgentProtocol:
    def __init__(self, ssm: Ssm) -> None:
        self.ssm = ssm
        self.credentials: dict[str, Credentials] = {}

    # ------------------------------------------------------------------ WSGI

    @staticmethod
    def handles(environ: dict[str, Any]) -> bool:
        return environ.get("HTTP_X_AMZ_TARGET", "") in TARGETS

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Answers one agent call in JSON 1.1 (called under the emulator's AWS lock)."""
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        body = environ["emulator.body"]
        try:
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                raise Refused("SerializationException", "Start of structure or map found where not expected.")
            if not isinstance(request, dict):
                raise Refused("SerializationException", "Start of structure or map found where not expected.")
            status, payload = 200, self.dispatch(target, request, environ, body)
        except Refused as err:
            status, payload = err.status, {"__type": err.code, "message": err.message}
        out = json.dumps(payload, default=str).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(out))), ("x-amzn-RequestId", str(uuid.uuid4()))]
        if status != 200:
            headers.append(("x-amzn-ErrorType", payload["__type"]))
        start_response(f"{status} {'OK' if status == 200 else 'Bad Request'}", headers)
        return [out]

    def dispatch(self, target: str, request: dict[str, Any], environ: dict[str, Any], body: bytes) -> dict[str, Any]:
        if target == "AmazonSSM.RegisterManagedInstance":
            return self.register_managed_instance(request)
        if target == "AmazonSSM.RequestManagedInstanceRoleToken":
            return self.request_role_token(request, environ, body)
        instance_id = self.caller(environ, body)
        if target == "AmazonSSM.UpdateInstanceInformation":
            return self.update_instance_information(instance_id, request, environ)
        if target == "EC2WindowsMessageDeliveryService.GetMessages":
            return {"Destination": instance_id, "Messages": [], "MessagesRequestId": str(uuid.uuid4())}
        return dict(QUIET[target])

    # -------------------------------------------------------------- register

    def register_managed_instance(self, request: dict[str, Any]) -> dict[str, Any]:
        code, activation_id = request.get("ActivationCode"), request.get("ActivationId")
        public_key, key_type, fingerprint = request.get("PublicKey"), request.get("PublicKeyType"), request.get("Fingerprint")
        if not isinstance(code, str) or not 20 <= len(code) <= 250:
            raise _validation("activationCode", "Member must have length between 20 and 250")
        if not isinstance(activation_id, str) or not ACTIVATION_ID.match(activation_id):
            raise _validation("activationId", f"Member must satisfy regular expression pattern: {ACTIVATION_ID.pattern}")
        if not isinstance(public_key, str) or len(public_key) < 392:
            raise _validation("publicKey", "Member must have length greater than or equal to 392")
        if key_type != "Rsa":
            raise _validation("publicKeyType", "Member must satisfy enum value set: [Rsa]")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise _validation("fingerprint", "Member must not be null")
        try:
            key = serialization.load_der_public_key(base64.b64decode(public_key, validate=True))
        except (ValueError, binascii.Error):
            key = None
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused("InvalidParameters", "The public key is not a base64 DER RSA public key.")
        node = self.register(activation_id, code)
        node.public_key, node.fingerprint = key, fingerprint
        return {"InstanceId": node.instance_id}

    def register(self, activation_id: str, code: str) -> Any:
        """The verdict on an ID + code; a success creates the node (ConnectionLost)."""
        found = self.ssm.find_activation(activation_id)
        if found is None:  # unknown or deleted
            raise Refused("InvalidActivation", "Activation ID is not valid or the activation does not exist.")
        backend, activation = found
        if not secrets.compare_digest(activation.code.encode(), code.encode()):
            raise Refused("InvalidActivation", "Activation ID and code do not match.")
        if activation.expired:
            raise Refused("ActivationExpired", "Activation has expired.")
        if activation.registrations >= activation.limit:
            raise Refused("RegistrationLimitExceeded", f"Registration limit of {activation.limit} reached for SSM On-prem managed instances.")
        activation.registrations += 1
        node = self.ssm.new_node(backend, activation)
        node.ping_status = "ConnectionLost"
        node.public_key, node.fingerprint = None, None
        return node

    @staticmethod
    def check_in(node: Any, info: dict[str, Any]) -> None:
        """What UpdateInstanceInformation does to a node: Online, with what the agent says."""
        for field, attr in INFO_FIELDS.items():
            value = info.get(field)
            if isinstance(value, str) and value:
                setattr(node, attr, value[:255] if field == "ComputerName" else value)
        node.ping_status = "Online"
        node.last_ping = _now()

    # ----------------------------------------------------------------- token

    def request_role_token(self, request: dict[str, Any], environ: dict[str, Any], body: bytes) -> dict[str, Any]:
        instance_id, scope, signed_headers, signature = _authorization(environ)
        found = self.ssm.find_node(instance_id)
        if found is None or getattr(found[1], "public_key", None) is None:
            raise Refused("AccessDeniedException", f"Instance {instance_id} is not registered.")
        node = found[1]
        string_to_sign = _string_to_sign(environ, body, scope, signed_headers)
        try:
            node.public_key.verify(
                base64.b64decode(signature, validate=True),
                string_to_sign.encode(),
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError, binascii.Error):
            raise Refused("InvalidSignatureException", "The request signature we calculated does not match the signature you provided.")
        if request.get("Fingerprint") != node.fingerprint:
            raise Refused("MachineFingerprintDoesNotMatch", "Fingerprint does not match the registered machine.")
        access_key = "ASIA" + secrets.token_hex(8).upper()
        expires = _now() + TOKEN_LIFETIME
        self.credentials[access_key] = Credentials(instance_id, secrets.token_urlsafe(30), expires)
        return {
            "AccessKeyId": access_key,
            "SecretAccessKey": self.credentials[access_key].secret,
            "SessionToken": base64.b64encode(secrets.token_bytes(48)).decode(),
            "TokenExpirationDate": expires.timestamp(),
            "UpdateKeyPair": False,
        }

    # --------------------------------------------------------- signed calls

    def caller(self, environ: dict[str, Any], body: bytes) -> str:
        """The node whose worker credentials signed this call (SigV4 HMAC, verified)."""
        access_key, scope, signed_headers, signature = _authorization(environ)
        creds = self.credentials.get(access_key)
        if creds is None or creds.expires <= _now():
            raise Refused("UnrecognizedClientException", "The security token included in the request is invalid.")
        date, region, service, _ = (scope.split("/") + ["", "", "", ""])[:4]
        key = hmac.new(("AWS4" + creds.secret).encode(), date.encode(), hashlib.sha256).digest()
        for part in (region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, _string_to_sign(environ, body, scope, signed_headers).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise Refused("InvalidSignatureException", "The request signature we calculated does not match the signature you provided.")
        if self.ssm.find_node(creds.instance_id) is None:
            raise Refused("AccessDeniedException", f"Instance {creds.instance_id} is not registered.")
        return creds.instance_id

    def update_instance_information(self, instance_id: str, request: dict[str, Any], environ: dict[str, Any]) -> dict[str, Any]:
        if request.get("InstanceId") != instance_id:
            raise Refused("AccessDeniedException", f"Credentials of {instance_id} cannot update {request.get('InstanceId')}.")
        platform = request.get("PlatformType")
        if platform is not None and platform not in ("Windows", "Linux", "MacOS"):
            raise _validation("platformType", "Member must satisfy enum value set: [Windows, Linux, MacOS]")
        info = dict(request)
        info.setdefault("IPAddress", environ.get("REMOTE_ADDR", ""))
        found = self.ssm.find_node(instance_id)
        assert found is not None  # caller() checked it, under the same lock
        self.check_in(found[1], info)
        return {}


# ------------------------------------------------------------------ SigV4 layout


def _authorization(environ: dict[str, Any]) -> tuple[str, str, list[str], str]:
    """(credential, scope, signed headers, signature) of an AWS4-HMAC-SHA256 header."""
    match = AUTHORIZATION.match(environ.get("HTTP_AUTHORIZATION", "").strip())
    if match is None or not environ.get("HTTP_X_AMZ_DATE"):
        raise Refused("MissingAuthenticationTokenException", "Missing Authentication Token", 400)
    credential, scope, signed, signature = match.groups()
    return credential, scope, signed.split(";"), signature


def _header(environ: dict[str, Any], name: str) -> str:
    if name == "host":
        return str(environ.get("HTTP_HOST", ""))
    if name in ("content-type", "content-length"):
        return str(environ.get(name.upper().replace("-", "_"), ""))
    return str(environ.get("HTTP_" + name.upper().replace("-", "_"), ""))


def _string_to_sign(environ: dict[str, Any], body: bytes, scope: str, signed_headers: list[str]) -> str:
    """SigV4's string to sign, rebuilt from the request as the signer laid it out."""
    query = sorted(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query)
    headers = "".join(f"{name}:{' '.join(_header(environ, name).split())}\n" for name in signed_headers)
    canonical = "\n".join(
        [
            environ.get("REQUEST_METHOD", "POST"),
            quote(environ.get("PATH_INFO", "") or "/", safe="/-_.~"),
            canonical_query,
            headers,
            ";".join(signed_headers),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    return "\n".join(["AWS4-HMAC-SHA256", environ.get("HTTP_X_AMZ_DATE", ""), scope, hashlib.sha256(canonical.encode()).hexdigest()])
