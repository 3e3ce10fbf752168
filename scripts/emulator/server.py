"""Local AWS emulator: moto server plus what moto lacks, over the real AWS wire protocol.

The rule: the emulator is never kinder than AWS, and it can fail in every way AWS does.

Adds to moto 5.2.5:
  * SSM CreateActivation, DescribeActivations (filters, pagination), DeleteActivation,
    with AWS's validation (limit 1..1000, expiry in the future and within 30 days,
    IAM role by name).
  * DynamoDB TransactWriteItems ClientRequestToken idempotency (moto ignores the token):
    a token seen in the last 10 minutes with the same request parameters returns
    success without applying the writes again if that request succeeded (and runs
    again if it was cancelled); with other parameters it is
    IdempotentParameterMismatchException. ReturnValuesOnConditionCheckFailure=ALL_OLD
    (the old Item in ConditionalCheckFailedException and in a transaction's
    CancellationReasons) is moto's own.
  * Errors in each service's protocol: DynamoDB JSON 1.0 (`__type` namespaced like
    com.amazonaws.dynamodb.v20120810#TransactionConflictException, content type
    application/x-amz-json-1.0, x-amz-crc32), SSM/KMS JSON 1.1 (`__type` is the
    bare code), IAM/STS query XML (<ErrorResponse>); all with x-amzn-ErrorType and
    x-amzn-RequestId.

Control endpoints (not AWS calls: no latency, not counted, no faults):
  GET    /_emulator/health    "OK" once the server is up.
  POST   /_emulator/register  {"ActivationId", "ActivationCode", "InstanceName"}: what the
                              SSM agent's registration does with an ID + code; 200
                              {"InstanceId"} or 400 {"error": "InvalidActivation" |
                              "ActivationExpired" | "RegistrationLimitExceeded"}.
  GET    /_emulator/calls     {"DynamoDB.UpdateItem": n, ...}; DELETE resets.
  GET    /_emulator/faults    the active faults (with what is left of each count).
  POST   /_emulator/faults    add one fault (a JSON object) or several (a list); DELETE
                              clears them all. A fault:
      {"operation": "DynamoDB.UpdateItem" | "SSM.*" | "*",   required; Service.Action
       "error":     "ThrottlingException" | ... | "ConnectionDropped" | "ConnectionReset"
                    | null,                                  null: delay only
       "when":      "before" | "after",   before (default): the call is NOT applied and
                                          the error is answered; after: moto applies the
                                          call (the write lands), then its answer is
                                          replaced by the error or the connection drops
       "status":    400,                  HTTP status; default 500 for Internal*, 503 for
                                          ServiceUnavailable*, else 400 (null for the
                                          connection errors, which answer nothing)
       "message":   "...",                error message; default DynamoDB's own wording
                                          for the codes it uses, else "Injected fault: X"
       "reasons":   ["TransactionConflict", "None"],  TransactionCanceledException only:
                                          one CancellationReasons Code per item (strings,
                                          or {"Code", "Message", "Item"} objects); padded
                                          with "None" / cut to the number of items in
                                          TransactItems; default TransactionConflict for
                                          the first item and None for the rest
       "rate":      1.0,                  chance that a matching call is hit
       "delay_ms":  0,                    extra time before the call (before) or after it
                                          is applied (after); outside the AWS lock
       "count":     null,                 how many calls it may still hit; null: no limit
       "skip":      0}                    matching calls to let through untouched first
      Faults are tried in order for each call; delays add up and the first fault whose
      error fires is the call's only error.
      ConnectionDropped: the emulator reads the whole request, then closes the TCP
      connection (FIN) without a byte of HTTP response, as a network failure does: SDKs see
      an incomplete response / I/O error (botocore ConnectionClosedError, hyper
      IncompleteMessage) and retry it as transient. ConnectionReset: the same with an RST
      (ECONNRESET).
  GET    /_emulator/latency   {"ms": N, "jitter_ms": J}
  POST   /_emulator/latency   {"ms": N, "jitter_ms": J (optional, default 0)}: each AWS call
                              takes N ms (uniform in N-J..N+J, never below 0) of network
                              time, half before the call and half after it, slept outside
                              the AWS lock so concurrent calls overlap as they do against
                              AWS. DELETE resets both to 0.

Every AWS call itself runs under one lock, so conditional writes are as atomic here as
they are in DynamoDB (moto's server is threaded and would otherwise race).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import os
import random
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from typing import Any, Iterable
from urllib.parse import parse_qs
from xml.sax.saxutils import escape as xml_escape

from moto.core.responses import ActionResult, EmptyResult
from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException, TransactionCanceledException
from moto.dynamodb.responses import DynamoHandler
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


# --------------------------------------------------------------------------- DynamoDB


IDEMPOTENCY_WINDOW_SECONDS = 600.0  # DynamoDB keeps a ClientRequestToken for 10 minutes


class IdempotentParameterMismatch(DynamodbException):
    def __init__(self) -> None:
        super().__init__(
            ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
            "The request uses the same client token as a previous, but non-identical request.",
        )


class _TokenRecord:
    def __init__(self, fingerprint: str, completed: float, succeeded: bool) -> None:
        self.fingerprint = fingerprint
        self.completed = completed
        self.succeeded = succeeded


def _client_tokens(backend: Any) -> dict[str, _TokenRecord]:
    if not hasattr(backend, "_vending_client_tokens"):
        backend._vending_client_tokens = {}
    return backend._vending_client_tokens  # type: ignore[no-any-return]


_moto_transact_write_items = DynamoHandler.transact_write_items


def transact_write_items(self: DynamoHandler) -> ActionResult:
    """TransactWriteItems with DynamoDB's ClientRequestToken semantics (moto has none).

    The token is valid for 10 minutes after the first request that used it completed.
    A repeat with the same parameters is a success without side effects if that request
    succeeded; a cancelled one runs again. Other parameters: IdempotentParameterMismatch.
    """
    token = self.body.get("ClientRequestToken")
    if not token:
        return _moto_transact_write_items(self)
    params = {k: v for k, v in self.body.items() if k != "ClientRequestToken"}
    fingerprint = json.dumps(params, sort_keys=True, default=repr)
    tokens = _client_tokens(self.dynamodb_backend)
    now = time.monotonic()
    for stale in [t for t, r in tokens.items() if now - r.completed > IDEMPOTENCY_WINDOW_SECONDS]:
        del tokens[stale]
    seen = tokens.get(token)
    if seen is not None and seen.fingerprint != fingerprint:
        raise IdempotentParameterMismatch()
    if seen is not None and seen.succeeded:
        return ActionResult({})
    try:
        result = _moto_transact_write_items(self)
    except TransactionCanceledException:
        if seen is None:
            tokens[token] = _TokenRecord(fingerprint, now, succeeded=False)
        raise
    if seen is None:
        tokens[token] = _TokenRecord(fingerprint, now, succeeded=True)
    else:
        seen.succeeded = True
    return result


DynamoHandler.transact_write_items = transact_write_items  # type: ignore[method-assign]


# --------------------------------------------------------------------------- WSGI wrapper


JSON_TARGET_SERVICES = {
    "AmazonSSM": "SSM",
    "DynamoDB_20120810": "DynamoDB",
    "DynamoDBStreams_20120810": "DynamoDBStreams",
    "TrentService": "KMS",
}


def request_body(environ: dict[str, Any]) -> bytes:
    """Reads the whole request body once and puts it back for moto to read."""
    if "emulator.body" in environ:
        return environ["emulator.body"]  # type: ignore[no-any-return]
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        body = stream.read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["emulator.body"] = body
    return body


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
        action = parse_qs(request_body(environ).decode("utf-8", "replace")).get("Action", [None])[0]
    return f"{service}.{action or environ.get('REQUEST_METHOD', '?')}"


CONNECTION_ERRORS = ("ConnectionDropped", "ConnectionReset")

# What DynamoDB says, and under which namespace, for the errors it is known to send.
DYNAMODB_NAMESPACES = {
    "ThrottlingException": "com.amazon.coral.availability",
    "ValidationException": "com.amazon.coral.validate",
    "UnrecognizedClientException": "com.amazon.coral.service",
    "AccessDeniedException": "com.amazon.coral.service",
    "IncompleteSignatureException": "com.amazon.coral.service",
    "MissingAuthenticationTokenException": "com.amazon.coral.service",
}
DYNAMODB_NAMESPACE = "com.amazonaws.dynamodb.v20120810"
DYNAMODB_MESSAGES = {
    "TransactionConflictException": "Transaction is ongoing for the item",
    "ConditionalCheckFailedException": "The conditional request failed",
    "ProvisionedThroughputExceededException": (
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API."
    ),
    "ThrottlingException": (
        "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically "
        "scaling your table or index so please try again shortly. If exceptions persist, check if you "
        "have a hot key: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html"
    ),
    "RequestLimitExceeded": (
        "Throughput exceeds the current throughput limit for your account. Please contact AWS Support "
        "at https://aws.amazon.com/support request a limit increase"
    ),
    "InternalServerError": "Internal server error",
    "TransactionInProgressException": "Transaction from previous request is still in progress",
    "IdempotentParameterMismatchException": (
        "The request uses the same client token as a previous, but non-identical request."
    ),
}
CANCELLATION_MESSAGES = {
    "ConditionalCheckFailed": "The conditional request failed",
    "TransactionConflict": "Transaction is ongoing for the item",
    "ItemCollectionSizeLimitExceeded": "Collection size exceeded",
    "ProvisionedThroughputExceeded": (
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API"
    ),
    "ThrottlingError": "Throughput exceeds the current capacity of your table or index.",
    "ValidationError": "One or more parameter values were invalid",
}
FAULT_FIELDS = {"operation", "error", "when", "status", "message", "reasons", "rate", "delay_ms", "count", "skip"}


class Fault:
    def __init__(self, spec: dict[str, Any]) -> None:
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object")
        unknown = set(spec) - FAULT_FIELDS
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        self.operation = str(spec["operation"])
        self.error = spec.get("error")
        if self.error is not None and (not isinstance(self.error, str) or not self.error):
            raise ValueError("error must be an error code or null")
        self.when = spec.get("when", "before")
        if self.when not in ("before", "after"):
            raise ValueError('when must be "before" or "after"')
        self.rate = float(spec.get("rate", 1.0))
        self.delay_ms = int(spec.get("delay_ms", 0))
        default_status = 400
        if str(self.error).startswith("Internal"):
            default_status = 500
        elif str(self.error).startswith("ServiceUnavailable"):
            default_status = 503
        self.status = int(spec.get("status", default_status))
        self.message = spec.get("message")
        if self.message is not None and not isinstance(self.message, str):
            raise ValueError("message must be a string")
        self.reasons = spec.get("reasons")
        if self.reasons is not None:
            if self.error != "TransactionCanceledException":
                raise ValueError("reasons only go with TransactionCanceledException")
            if not isinstance(self.reasons, list) or not all(
                isinstance(r, str) or (isinstance(r, dict) and isinstance(r.get("Code"), str)) for r in self.reasons
            ):
                raise ValueError('reasons must be a list of codes or {"Code": ...} objects')
        # How many matching calls it may still hit; None means no limit.
        self.remaining = None if spec.get("count") is None else int(spec["count"])
        # How many matching calls still pass untouched before it may fire.
        self.skip = int(spec.get("skip", 0))
        if self.skip < 0:
            raise ValueError("skip must not be negative")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if self.delay_ms < 0:
            raise ValueError("delay_ms must not be negative")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status")

    def applies_to(self, operation: str) -> bool:
        if self.operation in ("*", operation):
            return True
        return self.operation.endswith(".*") and operation.startswith(self.operation[:-1])

    def fires(self) -> bool:
        """Rolls the dice for one call (under the state lock)."""
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        if random.random() >= self.rate:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def as_json(self) -> dict[str, Any]:
        out = {
            "operation": self.operation,
            "error": self.error,
            "when": self.when,
            "status": None if self.error in CONNECTION_ERRORS else self.status,
            "rate": self.rate,
            "delay_ms": self.delay_ms,
            "count": self.remaining,
            "skip": self.skip,
        }
        if self.message is not None:
            out["message"] = self.message
        if self.reasons is not None:
            out["reasons"] = self.reasons
        return out


class Plan:
    """What the faults and the latency do to one call, decided when it arrives."""

    def __init__(self) -> None:
        self.before_s = 0.0  # network time and delays before the call is applied
        self.after_s = 0.0  # delays once the call is applied
        self.return_s = 0.0  # network time for the answer
        self.error: Fault | None = None


class DropConnection(ConnectionAbortedError):
    """Raised by the WSGI app to make the request handler hang up without an answer."""

    def __init__(self, reset: bool) -> None:
        super().__init__("emulator fault: connection dropped")
        self.reset = reset


class EmulatorRequestHandler(MotoRequestHandler):
    """Moto's request handler, plus hanging up on the client when a fault says so.

    Werkzeug's run_wsgi treats a ConnectionError from the app as the client having gone:
    it writes nothing and calls connection_dropped. That is where the socket is shut:
    FIN by default, RST (SO_LINGER 0, then close) for ConnectionReset.
    """

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        if isinstance(error, DropConnection):
            self.close_connection = True
            sock = self.connection
            try:
                if error.reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    # The descriptor really closes (with an RST) once rfile lets go of it
                    # in finish(); socketserver's later shutdown(SHUT_WR) then fails quietly
                    # instead of sending a FIN first.
                    sock.close()
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            how = "reset" if error.reset else "closed"
            self.log("info", '"%s" connection %s by an injected fault, no response', self.requestline, how)
        super().connection_dropped(error, environ)


class Emulator:
    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.aws_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.faults: list[Fault] = []
        self.latency_ms = 0
        self.jitter_ms = 0

    def plan(self, operation: str) -> Plan:
        """Network time and the faults for one call (under the state lock)."""
        plan = Plan()
        latency = self.latency_ms
        if self.jitter_ms:
            latency = max(0.0, latency + random.uniform(-self.jitter_ms, self.jitter_ms))
        plan.before_s = latency / 2000
        plan.return_s = latency / 1000 - plan.before_s
        for fault in self.faults:
            if not (fault.applies_to(operation) and fault.fires()):
                continue
            if fault.when == "before":
                plan.before_s += fault.delay_ms / 1000
            else:
                plan.after_s += fault.delay_ms / 1000
            if fault.error:
                plan.error = fault
                break
        return plan

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_emulator/"):
            return self.control(environ, start_response, path)
        body = request_body(environ)
        operation = operation_of(environ)
        with self.state_lock:
            self.calls[operation] += 1
            plan = self.plan(operation)
        fault = plan.error
        time.sleep(plan.before_s)
        if fault is not None and fault.when == "before":
            if fault.error in CONNECTION_ERRORS:
                raise DropConnection(reset=fault.error == "ConnectionReset")
            time.sleep(plan.return_s)
            return self.aws_error(start_response, fault.status, fault.error, operation, environ, body, fault)
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
        time.sleep(plan.after_s)
        if fault is not None:  # when == "after": the call is applied, its answer is lost
            if fault.error in CONNECTION_ERRORS:
                raise DropConnection(reset=fault.error == "ConnectionReset")
            time.sleep(plan.return_s)
            return self.aws_error(start_response, fault.status, fault.error, operation, environ, body, fault)
        time.sleep(plan.return_s)
        start_response(captured["status"], protocol_headers(environ, captured["status"], captured["headers"]))
        return chunks

    @staticmethod
    def aws_error(
        start_response: Any,
        status: int,
        code: str,
        operation: str = "",
        environ: dict[str, Any] | None = None,
        request: bytes = b"",
        fault: Fault | None = None,
    ) -> list[bytes]:
        """An error the way the service's protocol puts it on the wire."""
        environ = environ or {}
        request_id = str(uuid.uuid4())
        message = fault.message if fault is not None and fault.message is not None else None
        headers: list[tuple[str, str]] = []
        if operation.startswith("DynamoDB.") or operation.startswith("DynamoDBStreams."):
            payload = dynamodb_error(code, message, request, fault)
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers += [
                ("Content-Type", "application/x-amz-json-1.0"),
                ("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF)),
            ]
        elif environ.get("HTTP_X_AMZ_TARGET") or not environ:
            body = json.dumps({"__type": code, "message": message or f"Injected fault: {code}"}).encode()
            headers.append(("Content-Type", "application/x-amz-json-1.1"))
        else:  # query protocol (IAM, STS): XML
            sender = "Receiver" if status >= 500 else "Sender"
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
                f"<Error><Type>{sender}</Type><Code>{xml_escape(code)}</Code>"
                f"<Message>{xml_escape(message or f'Injected fault: {code}')}</Message></Error>"
                f"<RequestId>{request_id}</RequestId></ErrorResponse>"
            ).encode()
            headers.append(("Content-Type", "text/xml"))
        reason = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
        start_response(
            f"{status} {reason}",
            headers
            + [
                ("x-amzn-ErrorType", code),
                ("x-amzn-RequestId", request_id),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]

    def control(self, environ: dict[str, Any], start_response: Any, path: str) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        raw = request_body(environ)
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
                    self.faults.extend([Fault(s) for s in specs])  # all or none
                    return 200, [f.as_json() for f in self.faults]
                if method == "DELETE":
                    self.faults.clear()
                    return 200, []
        if path == "/_emulator/latency":
            with self.state_lock:
                if method == "POST":
                    spec = json.loads(raw or b"{}")
                    if not isinstance(spec, dict) or set(spec) - {"ms", "jitter_ms"}:
                        raise ValueError('latency is {"ms": N, "jitter_ms": J}')
                    ms, jitter = int(spec.get("ms", 0)), int(spec.get("jitter_ms", 0))
                    if ms < 0 or jitter < 0:
                        raise ValueError("ms and jitter_ms must not be negative")
                    self.latency_ms, self.jitter_ms = ms, jitter
                elif method == "DELETE":
                    self.latency_ms, self.jitter_ms = 0, 0
                if method in ("GET", "POST", "DELETE"):
                    return 200, {"ms": self.latency_ms, "jitter_ms": self.jitter_ms}
        if path == "/_emulator/register" and method == "POST":
            body = json.loads(raw or b"{}")
            with self.aws_lock:
                return register_instance(
                    str(body["ActivationId"]), str(body["ActivationCode"]), str(body.get("InstanceName", ""))
                )
        return 404, {"error": "NotFound", "message": f"{method} {path}"}


def dynamodb_error(code: str, message: str | None, request: bytes, fault: Fault | None) -> dict[str, Any]:
    """The JSON 1.0 body DynamoDB sends for `code`."""
    type_ = f"{DYNAMODB_NAMESPACES.get(code, DYNAMODB_NAMESPACE)}#{code}"
    if code != "TransactionCanceledException":
        return {"__type": type_, "message": message or DYNAMODB_MESSAGES.get(code, f"Injected fault: {code}")}
    try:
        parsed = json.loads(request or b"{}")
        items = (parsed.get("TransactItems") or parsed.get("TransactStatements")) if isinstance(parsed, dict) else None
    except ValueError:
        items = None
    given: list[Any] = list(fault.reasons) if fault is not None and fault.reasons is not None else ["TransactionConflict"]
    n = len(items) if isinstance(items, list) and items else max(1, len(given))
    given = (given + ["None"] * n)[:n]
    reasons = []
    for reason in given:
        if isinstance(reason, dict):
            reasons.append(reason)
        elif reason == "None":
            reasons.append({"Code": "None"})
        else:
            reasons.append({"Code": reason, "Message": CANCELLATION_MESSAGES.get(reason, f"Injected fault: {reason}")})
    codes = ", ".join(r["Code"] for r in reasons)
    return {
        "__type": type_,
        "CancellationReasons": reasons,
        "Message": message or f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
    }


def protocol_headers(environ: dict[str, Any], status: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Moto answers JSON-protocol errors as application/json; AWS uses the protocol's type."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if not target or status.startswith(("1", "2", "3")):
        return headers
    wanted = "application/x-amz-json-1.0" if target.startswith("DynamoDB") else "application/x-amz-json-1.1"
    return [(k, wanted if k.lower() == "content-type" and v == "application/json" else v) for k, v in headers]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCAL_EMULATOR_PORT", "24660")))
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(args.host, args.port, Emulator(), threaded=True, request_handler=EmulatorRequestHandler)


if __name__ == "__main__":
    main()
