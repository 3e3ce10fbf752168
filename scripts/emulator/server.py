"""Local AWS emulator: moto server plus what moto lacks, over the real AWS wire protocol.

Adds to moto 5.2.5:
  * SSM CreateActivation, DescribeActivations (filters, pagination), DeleteActivation,
    with AWS's validation (limit 1..1000, expiry in the future and within 30 days,
    IAM role by name).
  * POST   /_emulator/register  what the SSM agent's registration does with an ID + code.
  * GET    /_emulator/calls     {"DynamoDB.UpdateItem": n, ...}; DELETE resets.
  * POST   /_emulator/faults    inject errors and latency per operation; DELETE clears.
                                {"operation": "SSM.CreateActivation" | "SSM.*" | "*",
                                 "error": "ThrottlingException" | null, "rate": 0.3,
                                 "delay_ms": 0, "count": null (or how many calls to hit)}
  * GET    /_emulator/health    "OK" once the server is up.

Every AWS request runs under one lock, so conditional writes are as atomic here as
they are in DynamoDB (moto's server is threaded and would otherwise race).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import random
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any, Iterable
from urllib.parse import parse_qs

from moto.core.responses import ActionResult, EmptyResult
from moto.iam.models import iam_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.ssm.exceptions import SSMException, ValidationException
from moto.ssm.models import SimpleSystemManagerBackend, ssm_backends
from moto.ssm.responses import SimpleSystemManagerResponse
from werkzeug.serving import run_simple

MAX_ACTIVATION_LIFETIME = dt.timedelta(days=30)
CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


# --------------------------------------------------------------------------- SSM activations


class InvalidActivation(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidActivation", message)


class InvalidActivationId(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidActivationId", message)


class InvalidNextToken(SSMException):
    def __init__(self) -> None:
        super().__init__("InvalidNextToken", "The specified token isn't valid.")


class InvalidFilter(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidFilter", message)


class Activation:
    def __init__(
        self,
        account_id: str,
        iam_role: str,
        limit: int,
        expires: dt.datetime,
        description: str | None,
        default_instance_name: str | None,
        tags: list[dict[str, str]],
    ) -> None:
        self.account_id = account_id
        self.activation_id = str(uuid.uuid4())
        # Real codes are 20 characters of base64's alphabet, '+' and '/' included.
        self.code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(20))
        self.iam_role = iam_role
        self.limit = limit
        self.registrations = 0
        self.expires = expires
        self.created = dt.datetime.now(dt.timezone.utc)
        self.description = description
        self.default_instance_name = default_instance_name
        self.tags = tags
        self.instances: list[str] = []

    @property
    def expired(self) -> bool:
        return dt.datetime.now(dt.timezone.utc) >= self.expires

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ActivationId": self.activation_id,
            "IamRole": self.iam_role,
            "RegistrationLimit": self.limit,
            "RegistrationsCount": self.registrations,
            "ExpirationDate": self.expires,
            "Expired": self.expired,
            "CreatedDate": self.created,
            "Tags": self.tags,
        }
        if self.description is not None:
            out["Description"] = self.description
        if self.default_instance_name is not None:
            out["DefaultInstanceName"] = self.default_instance_name
        return out


def _activations(backend: SimpleSystemManagerBackend) -> dict[str, Activation]:
    if not hasattr(backend, "_vending_activations"):
        backend._vending_activations = {}  # type: ignore[attr-defined]
    return backend._vending_activations  # type: ignore[attr-defined]


def _to_datetime(value: Any) -> dt.datetime:
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, str):
        try:
            return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)
        except ValueError:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    raise ValidationException("ExpirationDate is not a valid timestamp")


def _role_exists(account_id: str, role_name: str) -> bool:
    for partition_backend in iam_backends[account_id].values():
        try:
            partition_backend.get_role(role_name)
            return True
        except Exception:  # moto raises its own NotFound type
            continue
    return False


def create_activation(self: SimpleSystemManagerResponse) -> ActionResult:
    role = self._get_param("IamRole")
    limit = self._get_param("RegistrationLimit", 1)
    expiry_raw = self._get_param("ExpirationDate")
    now = dt.datetime.now(dt.timezone.utc)
    if not role:
        raise ValidationException("1 validation error detected: IamRole must not be null")
    if ":" in role or "/" in role:
        raise ValidationException("IamRole must be the name of an IAM role, not an ARN or path")
    if not _role_exists(self.current_account, role):
        raise ValidationException(f"Nonexistent role or missing ssm service principal in trust policy: {role}")
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValidationException(
            "1 validation error detected: Value at 'registrationLimit' failed to satisfy "
            "constraint: Member must have value between 1 and 1000"
        )
    expires = now + dt.timedelta(hours=24) if expiry_raw is None else _to_datetime(expiry_raw)
    if expires <= now:
        raise ValidationException("ExpirationDate must be in the future")
    if expires > now + MAX_ACTIVATION_LIFETIME + dt.timedelta(seconds=5):
        raise ValidationException("ExpirationDate cannot be more than 30 days in the future")
    activation = Activation(
        self.current_account,
        role,
        limit,
        expires,
        self._get_param("Description"),
        self._get_param("DefaultInstanceName"),
        self._get_param("Tags", []) or [],
    )
    _activations(self.ssm_backend)[activation.activation_id] = activation
    return ActionResult({"ActivationId": activation.activation_id, "ActivationCode": activation.code})


def _matches(activation: Activation, filters: Iterable[dict[str, Any]]) -> bool:
    for f in filters:
        key, values = f.get("FilterKey"), f.get("FilterValues") or []
        field = {
            "ActivationIds": activation.activation_id,
            "DefaultInstanceName": activation.default_instance_name,
            "IamRole": activation.iam_role,
        }.get(key)
        if key not in ("ActivationIds", "DefaultInstanceName", "IamRole"):
            raise InvalidFilter(f"Invalid filter key {key}")
        if values and field not in values:
            return False
    return True


def describe_activations(self: SimpleSystemManagerResponse) -> ActionResult:
    filters = self._get_param("Filters", []) or []
    max_results = self._get_param("MaxResults", 50) or 50
    token = self._get_param("NextToken")
    if not 1 <= max_results <= 50:
        raise ValidationException("MaxResults must be between 1 and 50")
    found = [a for a in _activations(self.ssm_backend).values() if _matches(a, filters)]
    found.sort(key=lambda a: (a.created, a.activation_id))
    start = 0
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode())
        except Exception:
            raise InvalidNextToken()
    page = found[start : start + max_results]
    out: dict[str, Any] = {"ActivationList": [a.describe() for a in page]}
    if start + max_results < len(found):
        out["NextToken"] = base64.urlsafe_b64encode(str(start + max_results).encode()).decode()
    return ActionResult(out)


def delete_activation(self: SimpleSystemManagerResponse) -> ActionResult:
    activation_id = self._get_param("ActivationId")
    try:
        uuid.UUID(str(activation_id))
    except ValueError:
        raise InvalidActivationId(f"{activation_id} is not a valid activation ID")
    if _activations(self.ssm_backend).pop(activation_id, None) is None:
        raise InvalidActivation(f"Activation ID {activation_id} does not exist")
    return EmptyResult()


SimpleSystemManagerResponse.create_activation = create_activation  # type: ignore[attr-defined]
SimpleSystemManagerResponse.describe_activations = describe_activations  # type: ignore[attr-defined]
SimpleSystemManagerResponse.delete_activation = delete_activation  # type: ignore[attr-defined]


def register_instance(activation_id: str, code: str, instance_name: str) -> tuple[int, dict[str, Any]]:
    """What `amazon-ssm-agent -register` does against SSM, reduced to its verdicts."""
    for account_backends in ssm_backends.values():
        for backend in account_backends.values():
            activation = _activations(backend).get(activation_id)
            if activation is None:
                continue
            if not secrets.compare_digest(activation.code, code):
                return 400, {"error": "InvalidActivation"}
            if activation.expired:
                return 400, {"error": "ActivationExpired"}
            if activation.registrations >= activation.limit:
                return 400, {"error": "RegistrationLimitExceeded"}
            activation.registrations += 1
            activation.instances.append(instance_name)
            return 200, {"InstanceId": "mi-" + secrets.token_hex(9)[:17]}
    return 400, {"error": "InvalidActivation"}


# --------------------------------------------------------------------------- WSGI wrapper


JSON_TARGET_SERVICES = {
    "AmazonSSM": "SSM",
    "DynamoDB_20120810": "DynamoDB",
    "DynamoDBStreams_20120810": "DynamoDBStreams",
    "TrentService": "KMS",
}


def operation_of(environ: dict[str, Any]) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if "." in target:
        prefix, action = target.split(".", 1)
        return f"{JSON_TARGET_SERVICES.get(prefix, prefix)}.{action}"
    service = "Unknown"
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3].upper() if scope[3] in ("iam", "sts", "kms") else scope[3]
    action = parse_qs(environ.get("QUERY_STRING", "")).get("Action", [None])[0]
    if action is None and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = __import__("io").BytesIO(body)
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", [None])[0]
    return f"{service}.{action or environ.get('REQUEST_METHOD', '?')}"


class Fault:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.operation = str(spec["operation"])
        self.error = spec.get("error")
        self.rate = float(spec.get("rate", 1.0))
        self.delay_ms = int(spec.get("delay_ms", 0))
        self.status = int(spec.get("status", 500 if str(self.error).startswith("Internal") else 400))
        # How many matching calls it may still hit; None means no limit.
        self.remaining = None if spec.get("count") is None else int(spec["count"])
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")

    def applies_to(self, operation: str) -> bool:
        if self.operation in ("*", operation):
            return True
        return self.operation.endswith(".*") and operation.startswith(self.operation[:-1])

    def fires(self) -> bool:
        """Rolls the dice for one call (under the state lock)."""
        if self.remaining is not None and self.remaining <= 0:
            return False
        if random.random() >= self.rate:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def as_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "error": self.error,
            "rate": self.rate,
            "delay_ms": self.delay_ms,
            "count": self.remaining,
        }


class Emulator:
    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.aws_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.faults: list[Fault] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_emulator/"):
            return self.control(environ, start_response, path)
        operation = operation_of(environ)
        with self.state_lock:
            self.calls[operation] += 1
            fired = [f for f in self.faults if f.applies_to(operation) and f.fires()]
        for fault in fired:
            if fault.delay_ms:
                time.sleep(fault.delay_ms / 1000)
            if fault.error:
                return self.aws_error(start_response, fault.status, fault.error)
        with self.aws_lock:
            chunks: list[bytes] = []
            captured: dict[str, Any] = {}

            def capture(status: str, headers: list[Any], exc_info: Any = None) -> Any:
                captured["status"], captured["headers"] = status, headers
                return chunks.append

            result = self.moto(environ, capture)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        start_response(captured["status"], captured["headers"])
        return chunks

    @staticmethod
    def aws_error(start_response: Any, status: int, code: str) -> list[bytes]:
        body = json.dumps({"__type": code, "message": f"Injected fault: {code}"}).encode()
        reason = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
        start_response(
            f"{status} {reason}",
            [
                ("Content-Type", "application/x-amz-json-1.1"),
                ("x-amzn-ErrorType", code),
                ("x-amzn-RequestId", str(uuid.uuid4())),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]

    def control(self, environ: dict[str, Any], start_response: Any, path: str) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            status, payload = self.route(method, path, raw)
        except (ValueError, KeyError, TypeError) as err:
            status, payload = 400, {"error": "BadRequest", "message": str(err)}
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        content_type = "text/plain" if isinstance(payload, str) else "application/json"
        start_response(f"{status} {'OK' if status == 200 else 'Error'}", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def route(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        if path == "/_emulator/health" and method == "GET":
            return 200, "OK"
        if path == "/_emulator/calls":
            with self.state_lock:
                if method == "GET":
                    return 200, dict(self.calls)
                if method == "DELETE":
                    self.calls.clear()
                    return 200, {}
        if path == "/_emulator/faults":
            with self.state_lock:
                if method == "GET":
                    return 200, [f.as_json() for f in self.faults]
                if method == "POST":
                    spec = json.loads(raw or b"{}")
                    specs = spec if isinstance(spec, list) else [spec]
                    self.faults.extend(Fault(s) for s in specs)
                    return 200, [f.as_json() for f in self.faults]
                if method == "DELETE":
                    self.faults.clear()
                    return 200, []
        if path == "/_emulator/register" and method == "POST":
            body = json.loads(raw or b"{}")
            with self.aws_lock:
                return register_instance(
                    str(body["ActivationId"]), str(body["ActivationCode"]), str(body.get("InstanceName", ""))
                )
        return 404, {"error": "NotFound", "message": f"{method} {path}"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCAL_EMULATOR_PORT", "24660")))
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(args.host, args.port, Emulator(), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
