"""Who made a call, as AWS sees it: the caller's principal ARN, from its access key.

moto answers every parameter's LastModifiedUser with "N/A", so nothing that checks
who wrote a parameter (the service's VENDING_POOL_CONFIG_WRITERS) could be tested.
Here each successful SSM PutParameter (and LabelParameterVersion, which AWS also
records) stores the caller's principal ARN on the parameter's new version, and
DescribeParameters / GetParameterHistory answer it as LastModifiedUser, as AWS does.

The caller is the access key ID in the request's SigV4 Authorization header (what
AWS authenticates too). Its principal ARN comes from a mapping tests set; a key
nobody mapped is the IAM user arn:aws:iam::123456789012:user/<access key ID>
(moto's default account), never "N/A".

Control endpoints (hooked into app.py's router):
  GET    /_emulator/principals  {"ACCESS_KEY_ID": "arn:...", ...}: the mapping.
  POST   /_emulator/principals  {"ACCESS_KEY_ID": "arn:aws:iam::123456789012:role/x", ...}:
                                adds to the mapping (a value must be an ARN: 400
                                otherwise); DELETE clears it.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from moto.ssm.models import Parameter, ssm_backends

DEFAULT_ACCOUNT = "123456789012"

_lock = threading.Lock()
_principals: dict[str, str] = {}

RECORDED_OPERATIONS = ("SSM.PutParameter",)


def access_key_of(environ: dict[str, Any]) -> str:
    """The access key ID a SigV4-signed request names ("" when unsigned)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" not in auth:
        return ""
    return auth.split("Credential=", 1)[1].split("/", 1)[0].strip()


def region_of(environ: dict[str, Any]) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" not in auth:
        return "us-east-1"
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
    return scope[2] if len(scope) >= 3 else "us-east-1"


def principal_of(environ: dict[str, Any]) -> str:
    key = access_key_of(environ)
    with _lock:
        mapped = _principals.get(key)
    return mapped or f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/{key or 'anonymous'}"


def record_writer(operation: str, environ: dict[str, Any], request: bytes, succeeded: bool) -> None:
    """After moto applied a write: the caller becomes the parameter's LastModifiedUser."""
    if operation not in RECORDED_OPERATIONS or not succeeded:
        return
    try:
        name = json.loads(request or b"{}").get("Name")
    except ValueError:
        return
    if not isinstance(name, str):
        return
    backend = ssm_backends[DEFAULT_ACCOUNT][region_of(environ)]
    versions = backend._parameters.get(name)  # noqa: SLF001 - moto keeps versions here
    if versions:
        versions[-1].vending_last_modified_user = principal_of(environ)


def route(method: str, path: str, raw: bytes) -> tuple[int, Any] | None:
    """The control endpoints above; None for any other path."""
    if path != "/_emulator/principals":
        return None
    with _lock:
        if method == "GET":
            return 200, dict(_principals)
        if method == "DELETE":
            _principals.clear()
            return 200, {}
        if method == "POST":
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v.startswith("arn:") for k, v in body.items()
            ):
                raise ValueError('principals takes {"ACCESS_KEY_ID": "arn:...", ...}')
            _principals.update(body)
            return 200, dict(_principals)
    return 405, {"error": "MethodNotAllowed", "message": f"{method} {path}"}


def describe_with_writer(original: Any) -> Any:
    """moto's description of a parameter, with the recorded writer as LastModifiedUser."""

    def describe_response_object(self: Parameter, *args: Any, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = original(self, *args, **kwargs)
        writer = getattr(self, "vending_last_modified_user", None)
        if writer is not None:
            answer["LastModifiedUser"] = writer
        return answer

    return describe_response_object
