"""The AWS wire protocol around moto: which operation a request is, and errors as each
service's protocol puts them.

Errors: DynamoDB JSON 1.0 (`__type` namespaced like
com.amazonaws.dynamodb.v20120810#TransactionConflictException, content type
application/x-amz-json-1.0, x-amz-crc32), SSM/KMS JSON 1.1 (`__type` is the bare code),
IAM/STS query XML (<ErrorResponse>); all with x-amzn-ErrorType and x-amzn-RequestId.
moto's own JSON-protocol errors get the protocol's content type (protocol_headers).
"""

from __future__ import annotations

import io
import json
import uuid
import zlib
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape as xml_escape

JSON_TARGET_SERVICES = {
    "AmazonSSM": "SSM",
    "DynamoDB_20120810": "DynamoDB",
    "DynamoDBStreams_20120810": "DynamoDBStreams",
    "TrentService": "KMS",
    "EC2WindowsMessageDeliveryService": "EC2Messages",
}

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
    """The call's "Service.Action" (e.g. DynamoDB.UpdateItem, IAM.GetRole): what faults
    match, calls count and busy times are kept by."""
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


def aws_error(
    start_response: Any,
    status: int,
    code: str,
    operation: str = "",
    environ: dict[str, Any] | None = None,
    request: bytes = b"",
    fault: Any = None,
) -> list[bytes]:
    """An error the way the service's protocol puts it on the wire. `fault`: the
    faults.Fault or quotas.Refusal that caused it (its message, cancellation reasons and
    any other members of the error), if any."""
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
        payload = {"__type": code, "message": message or f"Injected fault: {code}", **extra_fields(fault)}
        body = json.dumps(payload).encode()
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


def dynamodb_error(code: str, message: str | None, request: bytes, fault: Any) -> dict[str, Any]:
    """The JSON 1.0 body DynamoDB sends for `code`."""
    type_ = f"{DYNAMODB_NAMESPACES.get(code, DYNAMODB_NAMESPACE)}#{code}"
    if code != "TransactionCanceledException":
        message = message or DYNAMODB_MESSAGES.get(code, f"Injected fault: {code}")
        return {"__type": type_, "message": message, **extra_fields(fault)}
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


def extra_fields(fault: Any) -> dict[str, Any]:
    """Members of the error beside its message (quotas.py: DynamoDB's ThrottlingReasons)."""
    return dict(getattr(fault, "fields", None) or {})


def protocol_headers(environ: dict[str, Any], status: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Moto answers JSON-protocol errors as application/json; AWS uses the protocol's type."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if not target or status.startswith(("1", "2", "3")):
        return headers
    wanted = "application/x-amz-json-1.0" if target.startswith("DynamoDB") else "application/x-amz-json-1.1"
    return [(k, wanted if k.lower() == "content-type" and v == "application/json" else v) for k, v in headers]
