"""Local AWS emulator: moto server plus what moto lacks, over the real AWS wire protocol.

The rule: the emulator is never kinder than AWS, and it can fail in every way AWS does.

Adds to moto 5.2.5:
  * SSM CreateActivation, DescribeActivations (filters, pagination), DeleteActivation,
    with AWS's validation (limit 1..1000, expiry in the future and within 30 days,
    IAM role by name, tags in SSM's tag alphabet: keys 1-128, values 0-256 characters
    of letters, digits, spaces and _.:/=+-@, no aws: prefix).
  * The SSM Agent's own calls (RegisterManagedInstance unsigned, RequestManagedInstanceRoleToken
    RSA-signed, UpdateInstanceInformation, the worker's polling): agent_protocol.py, whose
    docstring says what each does and refuses. They count, take latency and faults as
    every AWS call does ("SSM.RegisterManagedInstance", ...).
  * SSM managed nodes, made by the agent's RegisterManagedInstance or POST
    /_emulator/register (below):
    DescribeInstanceInformation with Filters (ActivationIds, AgentVersion,
    AssociationStatus, IamRole, InstanceIds, PingStatus, PlatformTypes, ResourceType,
    SourceIds, SourceTypes, tag-key, tag:KEY; tag filters cannot be combined with the
    others) or the legacy InstanceInformationFilterList (not both), MaxResults 5..50
    (default 10) and a NextToken that is a cursor in registration order, so nodes
    deregistered between pages shift nothing. With tag filters MaxResults counts the
    nodes looked at before filtering, as SSM does: pages can be short or empty and still
    carry a NextToken. Refusals: InvalidFilterKey, InvalidInstanceInformationFilterValue
    (a bad PingStatus/PlatformTypes/ResourceType value, two ResourceType values, tag
    and other filters together), InvalidInstanceId (an InstanceIds value that is not a
    node), InvalidNextToken, ValidationException.
    A node's tags (ListTagsForResource / AddTagsToResource / RemoveTagsFromResource with
    ResourceType ManagedInstance) start as its activation's tags.
    DeregisterManagedInstance removes the node and its tags (InvalidInstanceId for an
    unknown one, ValidationException for an ID that is not mi- + 17 hex); as in SSM the
    activation's RegistrationsCount does not go down and the slot is not given back.
  * SSM GetParametersByPath: moto's, plus AWS's validation (MaxResults 1..10, a Path that
    starts with / and has at most 15 levels, no tag/Name/Path/Tier/DataType filters) and
    a NextToken that is a cursor on the parameter name (results in name order). With
    ParameterFilters, MaxResults counts the parameters looked at, so pages can be short
    or empty and still carry a NextToken.
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
  POST   /_emulator/register  {"ActivationId", "ActivationCode", "InstanceName"}: a shortcut
                              for an agent that registers and checks in: the same verdict
                              code as RegisterManagedInstance (and the same count against the
                              limit), then the check-in of UpdateInstanceInformation; 200
                              {"InstanceId": "mi-" + 17 hex} or 400 {"error":
                              "InvalidActivation" (unknown, deleted, wrong code) |
                              "ActivationExpired" | "RegistrationLimitExceeded"}. A success
                              leaves the managed node checked in: ComputerName = InstanceName
                              ("localhost" when empty), IamRole and Name (the activation's
                              DefaultInstanceName) from the activation, PingStatus Online,
                              LastPingDateTime = RegistrationDate = now, ResourceType
                              ManagedInstance, PlatformType Linux, the activation's tags.
                              Optional fields describe the agent: "PlatformType" (Linux |
                              Windows | MacOS), "PlatformName", "PlatformVersion",
                              "IPAddress" (default: the caller's address), "AgentVersion".
                              Other fields: 400 {"error": "BadRequest", "message"}.
  GET    /_emulator/nodes     {"Nodes": [node, ...] in registration order, "Deregistered":
                              [{"InstanceId", "ActivationId", "ComputerName",
                              "DeregisteredAt"}, ...]}; a node is DescribeInstanceInformation's
                              InstanceInformation with dates as ISO 8601 UTC strings.
  GET    /_emulator/nodes/ID  the node, or 404 {"error": "InvalidInstanceId", "message"}.
  POST   /_emulator/nodes/ID  {"PingStatus": "Online" | "ConnectionLost" | "Inactive",
                              "LastPingDateTime": ..., "RegistrationDate": ...} (each
                              optional; dates ISO 8601 or epoch seconds): ages a node for
                              tests; 200 with the node as it is now, 404 {"error":
                              "InvalidInstanceId", "message"} for an unknown ID, 400
                              {"error": "BadRequest", "message"} for anything else.
  GET    /_emulator/calls     {"DynamoDB.UpdateItem": n, ...}; DELETE resets (busy too).
  GET    /_emulator/busy      {"DynamoDB.UpdateItem": {"calls", "total_ms", "slowest_ms"}, ...}:
                              how long each operation held the emulator (one call at a
                              time), to tell the emulator's own cost from the service's.
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
  GET    /_emulator/principals  access key ID -> principal ARN, recorded as each parameter
                              write's LastModifiedUser (principals.py); POST adds, DELETE clears.
  GET    /_emulator/latency   {"ms": N, "jitter_ms": J}
  POST   /_emulator/latency   {"ms": N, "jitter_ms": J (optional, default 0)}: each AWS call
                              takes N ms (uniform in N-J..N+J, never below 0) of network
                              time, half before the call and half after it, slept outside
                              the AWS lock so concurrent calls overlap as they do against
                              AWS. DELETE resets both to 0.

IAM: with EMULATOR_IAM_CALLS_DIR set, every call signed with the service's access key
(iam_calls.SERVICE_ACCESS_KEY_ID, which provision.py hands `vending`) is recorded with the
IAM action(s), resource ARN and context keys AWS would evaluate (iam_calls.py), for
tests/iam/check.py. The emulator itself still enforces no IAM.

Every AWS call itself runs under one lock, so conditional writes are as atomic here as
they are in DynamoDB (moto's server is threaded and would otherwise race).
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import gc
import io
import itertools
import json
import os
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import unicodedata
import zlib
from collections import Counter
from typing import Any, Iterable
from urllib.parse import parse_qs
from xml.sax.saxutils import escape as xml_escape

from moto.core.responses import ActionResult, EmptyResult
from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException, TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler
from moto.iam.models import iam_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.ssm.exceptions import InvalidResourceId, SSMException, ValidationException
from moto.ssm.models import SimpleSystemManagerBackend, ssm_backends
from moto.ssm.responses import SimpleSystemManagerResponse
from werkzeug.serving import run_simple

# The emulator's own modules, next to this file (also when imported, by zygote.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kms_keys  # noqa: E402
import principals  # noqa: E402
from agent_protocol import AgentProtocol, Refused, Ssm  # noqa: E402
from iam_calls import Recorder as IamCallRecorder  # noqa: E402

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
        self.deregistered = 0  # registrations whose node was deregistered (reporting only)

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
    description = self._get_param("Description")
    default_name = self._get_param("DefaultInstanceName")
    if description is not None and len(str(description)) > 256:
        raise ValidationException(_constraint("description", description, "Member must have length less than or equal to 256"))
    if default_name is not None and (len(str(default_name)) > 256 or not _tag_text_ok(str(default_name))):
        raise ValidationException(
            _constraint("defaultInstanceName", default_name, f"Member must satisfy regular expression pattern: {TAG_PATTERN}")
        )
    tags = self._get_param("Tags", []) or []
    _validate_tags(tags)
    activation = Activation(self.current_account, role, limit, expires, description, default_name, tags)
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


def _encode_cursor(position: Any) -> str:
    """An opaque NextToken that names the last item a page covered, never an offset: an
    item deleted (or added before it) between two pages does not shift the next page."""
    return base64.urlsafe_b64encode(json.dumps({"after": position}).encode()).decode()


def _decode_cursor(token: Any) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(str(token).encode()))["after"]
    except Exception:
        raise InvalidNextToken()


def describe_activations(self: SimpleSystemManagerResponse) -> ActionResult:
    filters = self._get_param("Filters", []) or []
    max_results = self._get_param("MaxResults", 50) or 50
    token = self._get_param("NextToken")
    if not 1 <= max_results <= 50:
        raise ValidationException("MaxResults must be between 1 and 50")
    found = [a for a in _activations(self.ssm_backend).values() if _matches(a, filters)]
    found.sort(key=lambda a: (a.created, a.activation_id))
    if token:
        after = _decode_cursor(token)
        if not (isinstance(after, list) and len(after) == 2):
            raise InvalidNextToken()
        found = [a for a in found if [a.created.timestamp(), a.activation_id] > after]
    page = found[:max_results]
    out: dict[str, Any] = {"ActivationList": [a.describe() for a in page]}
    if len(found) > max_results:
        out["NextToken"] = _encode_cursor([page[-1].created.timestamp(), page[-1].activation_id])
    return ActionResult(out)


def delete_activation(self: SimpleSystemManagerResponse) -> ActionResult:
    activation_id = self._get_param("ActivationId")
    try:
        uuid.UUID(str(activation_id))
    except ValueError:
        raise InvalidActivationId(f"{activation_id} is not a valid activation ID")
    if _activations(self.ssm_backend).pop(activation_id, None) is None:
        raise InvalidActivation(f"Activation ID {activation_id} does not exist")
    _deleted_activations(self.ssm_backend).add(activation_id)
    return EmptyResult()


SimpleSystemManagerResponse.create_activation = create_activation  # type: ignore[attr-defined]
SimpleSystemManagerResponse.describe_activations = describe_activations  # type: ignore[attr-defined]
SimpleSystemManagerResponse.delete_activation = delete_activation  # type: ignore[attr-defined]


def _deleted_activations(backend: SimpleSystemManagerBackend) -> set[str]:
    if not hasattr(backend, "_vending_deleted_activations"):
        backend._vending_deleted_activations = set()  # type: ignore[attr-defined]
    return backend._vending_deleted_activations  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- tags


# SSM's tag alphabet (TagKey, TagValue and DefaultInstanceName in the service model).
TAG_PATTERN = r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$"
TAG_PUNCTUATION = frozenset("_.:/=+-@")


def _tag_text_ok(text: str) -> bool:
    """Python's re has no \\p{..}: letters, separators and numbers by Unicode category."""
    return all(unicodedata.category(c)[0] in "LZN" or c in TAG_PUNCTUATION for c in text)


def _constraint(where: str, value: Any, constraint: str) -> str:
    return f"1 validation error detected: Value '{value}' at '{where}' failed to satisfy constraint: {constraint}"


def _validate_tags(tags: Any) -> None:
    """What SSM refuses in a TagList (CreateActivation, AddTagsToResource)."""
    if not isinstance(tags, list):
        raise ValidationException("Tags must be a list")
    if len(tags) > 1000:
        raise ValidationException(_constraint("tags", f"[{len(tags)} tags]", "Member must have length less than or equal to 1000"))
    for i, tag in enumerate(tags, 1):
        key = tag.get("Key") if isinstance(tag, dict) else None
        value = tag.get("Value") if isinstance(tag, dict) else None
        if not isinstance(key, str) or not 1 <= len(key) <= 128:
            raise ValidationException(_constraint(f"tags.{i}.member.key", key, "Member must have length between 1 and 128"))
        if not _tag_text_ok(key):
            raise ValidationException(
                _constraint(f"tags.{i}.member.key", key, f"Member must satisfy regular expression pattern: {TAG_PATTERN}")
            )
        if key.lower().startswith("aws:"):
            raise ValidationException(f"Tag keys beginning with 'aws:' are reserved: {key}")
        if not isinstance(value, str) or len(value) > 256:
            raise ValidationException(_constraint(f"tags.{i}.member.value", value, "Member must have length less than or equal to 256"))
        if not _tag_text_ok(value):
            raise ValidationException(
                _constraint(f"tags.{i}.member.value", value, f"Member must satisfy regular expression pattern: {TAG_PATTERN}")
            )


# --------------------------------------------------------------------------- managed nodes


class InvalidInstanceId(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidInstanceId", message)


class InvalidFilterKey(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidFilterKey", message)


class InvalidInstanceInformationFilterValue(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidInstanceInformationFilterValue", message)


MANAGED_INSTANCE_ID = re.compile(r"^mi-[0-9a-f]{17}$")
INSTANCE_ID = re.compile(r"(^i-(\w{8}|\w{17})$)|(^mi-\w{17}$)")
PING_STATUSES = ("Online", "ConnectionLost", "Inactive")
PLATFORM_TYPES = ("Windows", "Linux", "MacOS")
RESOURCE_TYPES = ("EC2Instance", "ManagedInstance")
ASSOCIATION_STATUSES = ("Success", "Pending", "Failed")
LEGACY_FILTER_KEYS = ("InstanceIds", "AgentVersion", "PingStatus", "PlatformTypes", "ActivationIds", "IamRole", "ResourceType", "AssociationStatus")
FILTER_KEYS = LEGACY_FILTER_KEYS + ("SourceIds", "SourceTypes")
AGENT_VERSION = "3.3.1142.0"
REGISTER_FIELDS = {"ActivationId", "ActivationCode", "InstanceName", "PlatformType", "PlatformName", "PlatformVersion", "IPAddress", "AgentVersion"}
NODE_UPDATE_FIELDS = {"PingStatus", "LastPingDateTime", "RegistrationDate"}
_node_sequence = itertools.count(1)


class ManagedNode:
    """A hybrid managed node ("mi-..."), as SSM keeps it once an agent registered."""

    def __init__(self, activation: Activation) -> None:
        """A node as RegisterManagedInstance leaves it: ConnectionLost and nothing known of
        the machine until the agent checks in (agent_protocol.AgentProtocol.check_in)."""
        now = dt.datetime.now(dt.timezone.utc)
        self.seq = next(_node_sequence)  # registration order: what NextToken cursors follow
        self.instance_id = "mi-" + secrets.token_hex(9)[:17]
        self.activation_id = activation.activation_id
        self.iam_role = activation.iam_role
        self.name = activation.default_instance_name
        self.ping_status = "ConnectionLost"
        self.last_ping = now
        self.registered = now
        self.computer_name: str | None = None
        self.platform_type: str | None = None
        self.platform_name: str | None = None
        self.platform_version: str | None = None
        self.agent_version: str | None = None
        self.ip_address: str | None = None

    def describe(self) -> dict[str, Any]:
        """One InstanceInformation, the fields AWS returns for a hybrid node without associations."""
        out: dict[str, Any] = {
            "InstanceId": self.instance_id,
            "PingStatus": self.ping_status,
            "LastPingDateTime": self.last_ping,
            "AgentVersion": self.agent_version,
            "IsLatestVersion": self.agent_version == AGENT_VERSION if self.agent_version else None,
            "PlatformType": self.platform_type,
            "PlatformName": self.platform_name,
            "PlatformVersion": self.platform_version,
            "ActivationId": self.activation_id,
            "IamRole": self.iam_role,
            "RegistrationDate": self.registered,
            "ResourceType": "ManagedInstance",
            "IPAddress": self.ip_address,
            "ComputerName": self.computer_name,
            "SourceId": self.instance_id,
            "SourceType": "AWS::SSM::ManagedInstance",
        }
        if self.name:
            out["Name"] = self.name
        return {k: v for k, v in out.items() if v is not None}

    def as_json(self) -> dict[str, Any]:
        """The same for the control endpoints, dates as ISO 8601 UTC."""
        return {k: _iso(v) if isinstance(v, dt.datetime) else v for k, v in self.describe().items()}


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _nodes(backend: SimpleSystemManagerBackend) -> dict[str, ManagedNode]:
    if not hasattr(backend, "_vending_nodes"):
        backend._vending_nodes = {}  # type: ignore[attr-defined]
    return backend._vending_nodes  # type: ignore[attr-defined]


def _deregistered(backend: SimpleSystemManagerBackend) -> list[dict[str, Any]]:
    if not hasattr(backend, "_vending_deregistered"):
        backend._vending_deregistered = []  # type: ignore[attr-defined]
    return backend._vending_deregistered  # type: ignore[attr-defined]


def _all_backends() -> Iterable[SimpleSystemManagerBackend]:
    for account_backends in ssm_backends.values():
        yield from account_backends.values()


def _find_node(instance_id: str) -> tuple[SimpleSystemManagerBackend, ManagedNode] | None:
    for backend in _all_backends():
        node = _nodes(backend).get(instance_id)
        if node is not None:
            return backend, node
    return None


def _node_matcher(filters: list[Any], legacy: list[Any], nodes: dict[str, ManagedNode]) -> tuple[Any, bool]:
    """(predicate, by_tag) for DescribeInstanceInformation's filters. With tag filters SSM
    applies MaxResults before filtering (pages can be short or empty and still carry a
    NextToken); by_tag says so."""
    if filters and legacy:
        raise ValidationException("InstanceInformationFilterList and Filters cannot be used together")
    tests: list[Any] = []
    kinds = set()
    specs: list[tuple[str, list[Any], str]] = []
    for i, f in enumerate(filters, 1):
        if not isinstance(f, dict):
            raise ValidationException(f"filters.{i} is not a filter")
        specs.append((f.get("Key"), f.get("Values"), f"filters.{i}.member"))
    for i, f in enumerate(legacy, 1):
        if not isinstance(f, dict):
            raise ValidationException(f"instanceInformationFilterList.{i} is not a filter")
        key = f.get("key")
        if key not in LEGACY_FILTER_KEYS:
            raise ValidationException(
                _constraint(f"instanceInformationFilterList.{i}.member.key", key, f"Member must satisfy enum value set: [{', '.join(LEGACY_FILTER_KEYS)}]")
            )
        specs.append((key, f.get("valueSet"), f"instanceInformationFilterList.{i}.member.valueSet"))
    for key, values, where in specs:
        if not isinstance(key, str) or not key:
            raise ValidationException(_constraint(where + ".key", key, "Member must have length greater than or equal to 1"))
        if not isinstance(values, list) or not 1 <= len(values) <= 100:
            raise ValidationException(_constraint(where + ".values", values, "Member must have length between 1 and 100"))
        if not all(isinstance(v, str) and v for v in values):
            raise ValidationException(_constraint(where + ".values", values, "[Member must have length greater than or equal to 1]"))
        wanted = set(values)
        if key == "tag-key":
            kinds.add("tag")
            tests.append(lambda n, b, w=wanted: bool(w & set(_node_tags(b, n))))
            continue
        if key.startswith("tag:") and len(key) > 4:
            kinds.add("tag")
            tests.append(lambda n, b, w=wanted, k=key[4:]: _node_tags(b, n).get(k) in w)
            continue
        if key not in FILTER_KEYS:
            raise InvalidFilterKey(f"The filter key {key} is not valid. Valid filter keys: {', '.join(FILTER_KEYS)}, tag-key, tag:KEY")
        kinds.add("plain")
        allowed = {"PingStatus": PING_STATUSES, "PlatformTypes": PLATFORM_TYPES, "ResourceType": RESOURCE_TYPES, "AssociationStatus": ASSOCIATION_STATUSES}.get(key)
        if allowed is not None and not wanted <= set(allowed):
            raise InvalidInstanceInformationFilterValue(f"{key} filter values {sorted(wanted - set(allowed))} are not valid: {', '.join(allowed)}")
        if key == "ResourceType" and len(values) != 1:
            raise InvalidInstanceInformationFilterValue("ResourceType filter may contain only one value.")
        if key == "InstanceIds":
            for value in values:
                if not INSTANCE_ID.match(value) or value not in nodes:
                    raise InvalidInstanceId(f"Instance Id {value} is not valid or does not exist")
        field = {
            "InstanceIds": lambda n: n.instance_id,
            "SourceIds": lambda n: n.instance_id,
            "AgentVersion": lambda n: n.agent_version,
            "PingStatus": lambda n: n.ping_status,
            "PlatformTypes": lambda n: n.platform_type,
            "ActivationIds": lambda n: n.activation_id,
            "IamRole": lambda n: n.iam_role,
            "ResourceType": lambda n: "ManagedInstance",
            "SourceTypes": lambda n: "AWS::SSM::ManagedInstance",
            "AssociationStatus": lambda n: None,
        }[key]
        tests.append(lambda n, b, w=wanted, get=field: get(n) in w)
    if kinds == {"tag", "plain"}:
        raise InvalidInstanceInformationFilterValue("Tag filters can't be combined with other filter types.")
    return (lambda n, b: all(t(n, b) for t in tests)), kinds == {"tag"}


def _node_tags(backend: SimpleSystemManagerBackend, node: ManagedNode) -> dict[str, str]:
    return backend._resource_tags.get("ManagedInstance", {}).get(node.instance_id, {})  # type: ignore[no-any-return]


def _page(items: list[Any], matches: Any, max_results: int, prefilter: bool) -> tuple[list[Any], Any]:
    """One page of `items` (in cursor order, already past the token's cursor) and the last
    item it covered (None when nothing is left). prefilter: MaxResults counts the items
    looked at, as SSM does for tag and parameter filters, so a page may be short or empty."""
    if prefilter:
        window = items[:max_results]
        return [i for i in window if matches(i)], (window[-1] if len(items) > max_results else None)
    found = [i for i in items if matches(i)]
    page = found[:max_results]
    return page, (page[-1] if len(found) > max_results else None)


def describe_instance_information(self: SimpleSystemManagerResponse) -> ActionResult:
    filters = self._get_param("Filters") or []
    legacy = self._get_param("InstanceInformationFilterList") or []
    max_results = self._get_param("MaxResults")
    token = self._get_param("NextToken")
    if max_results is None:
        max_results = 10
    if not isinstance(max_results, int) or max_results < 5:
        raise ValidationException(_constraint("maxResults", max_results, "Member must have value greater than or equal to 5"))
    if max_results > 50:
        raise ValidationException(_constraint("maxResults", max_results, "Member must have value less than or equal to 50"))
    backend = self.ssm_backend
    nodes = _nodes(backend)
    matches, by_tag = _node_matcher(filters, legacy, nodes)
    after = _decode_cursor(token) if token else 0
    if not isinstance(after, int):
        raise InvalidNextToken()
    ordered = sorted((n for n in nodes.values() if n.seq > after), key=lambda n: n.seq)
    page, last = _page(ordered, lambda n: matches(n, backend), max_results, by_tag)
    out: dict[str, Any] = {"InstanceInformationList": [n.describe() for n in page]}
    if last is not None:
        out["NextToken"] = _encode_cursor(last.seq)
    return ActionResult(out)


def deregister_managed_instance(self: SimpleSystemManagerResponse) -> ActionResult:
    instance_id = self._get_param("InstanceId")
    if not isinstance(instance_id, str) or not MANAGED_INSTANCE_ID.match(instance_id):
        raise ValidationException(
            _constraint("instanceId", instance_id, "Member must satisfy regular expression pattern: (^mi-[0-9a-f]{17}$)|(^eks_c:[0-9A-Za-z][A-Za-z0-9\\-_]{0,99}_\\w{17}$)")
        )
    backend = self.ssm_backend
    node = _nodes(backend).pop(instance_id, None)
    if node is None:
        raise InvalidInstanceId(f"Instance Id {instance_id} is not valid or does not exist")
    backend._resource_tags.get("ManagedInstance", {}).pop(instance_id, None)
    # SSM never gives the registration back: RegistrationsCount stays, the slot stays used.
    _deregistered(backend).append(
        {"InstanceId": instance_id, "ActivationId": node.activation_id, "ComputerName": node.computer_name,
         "DeregisteredAt": _iso(dt.datetime.now(dt.timezone.utc))}
    )
    activation = _activations(backend).get(node.activation_id)
    if activation is not None:
        activation.deregistered += 1
    return EmptyResult()


SimpleSystemManagerResponse.describe_instance_information = describe_instance_information  # type: ignore[attr-defined]
SimpleSystemManagerResponse.deregister_managed_instance = deregister_managed_instance  # type: ignore[attr-defined]

_moto_validate_resource = SimpleSystemManagerBackend._validate_resource_type_and_id


def _validate_resource_type_and_id(self: SimpleSystemManagerBackend, resource_type: str, resource_id: str) -> str:
    """Tags on managed nodes (moto knows no node, so it refuses every ManagedInstance)."""
    if resource_type == "ManagedInstance":
        if resource_id in _nodes(self):
            return resource_id
        raise InvalidResourceId()
    return _moto_validate_resource(self, resource_type, resource_id)  # type: ignore[no-any-return]


SimpleSystemManagerBackend._validate_resource_type_and_id = _validate_resource_type_and_id  # type: ignore[method-assign]

_moto_add_tags_to_resource = SimpleSystemManagerResponse.add_tags_to_resource


def add_tags_to_resource(self: SimpleSystemManagerResponse) -> ActionResult:
    _validate_tags(self._get_param("Tags"))
    return _moto_add_tags_to_resource(self)  # type: ignore[no-any-return]


SimpleSystemManagerResponse.add_tags_to_resource = add_tags_to_resource  # type: ignore[method-assign]


def _find_activation(activation_id: str) -> tuple[SimpleSystemManagerBackend, Activation] | None:
    for backend in _all_backends():
        activation = _activations(backend).get(activation_id)
        if activation is not None:  # deleted activations are gone from here too
            return backend, activation
    return None


def _new_node(backend: SimpleSystemManagerBackend, activation: Activation) -> ManagedNode:
    """Stores a node for a registration SSM accepted, tagged with the activation's tags."""
    nodes = _nodes(backend)
    node = ManagedNode(activation)
    while node.instance_id in nodes or _find_node(node.instance_id) is not None:
        node.instance_id = "mi-" + secrets.token_hex(9)[:17]
    nodes[node.instance_id] = node
    tags = {t["Key"]: t["Value"] for t in activation.tags}
    if tags:
        backend._resource_tags["ManagedInstance"][node.instance_id] = tags
    return node


# The agent's own protocol (RegisterManagedInstance, RequestManagedInstanceRoleToken,
# UpdateInstanceInformation, the worker's polling): scripts/emulator/agent_protocol.py.
AGENT = AgentProtocol(Ssm(find_activation=_find_activation, new_node=_new_node, find_node=_find_node))


def register_instance(body: dict[str, Any], source_ip: str = "") -> tuple[int, dict[str, Any]]:
    """/_emulator/register: RegisterManagedInstance's verdict on an ID + code (the same
    code as the agent's call), then the node checks in as UpdateInstanceInformation does."""
    unknown = set(body) - REGISTER_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    activation_id, code = str(body["ActivationId"]), str(body["ActivationCode"])
    platform = body.get("PlatformType")
    if platform is not None and platform not in PLATFORM_TYPES:
        raise ValueError(f"PlatformType must be one of {', '.join(PLATFORM_TYPES)}")
    try:
        node = AGENT.register(activation_id, code)
    except Refused as refused:
        return 400, {"error": refused.code}
    name = str(body.get("InstanceName") or "") or "localhost"
    info = {k: str(body[k]) for k in ("PlatformType", "PlatformName", "PlatformVersion", "IPAddress", "AgentVersion") if body.get(k)}
    windows = info.setdefault("PlatformType", "Linux") == "Windows"
    info.setdefault("PlatformName", "Microsoft Windows Server 2022 Datacenter" if windows else "Amazon Linux")
    info.setdefault("PlatformVersion", "10.0.20348" if windows else "2023")
    info.setdefault("AgentVersion", AGENT_VERSION)
    info.setdefault("IPAddress", source_ip or "127.0.0.1")
    AGENT.check_in(node, {**info, "ComputerName": name})
    return 200, {"InstanceId": node.instance_id}


def update_node(instance_id: str, body: Any) -> tuple[int, dict[str, Any]]:
    """Ages a node for tests: PingStatus, LastPingDateTime, RegistrationDate."""
    found = _find_node(instance_id)
    if found is None:
        return 404, {"error": "InvalidInstanceId", "message": f"no managed node {instance_id}"}
    if not isinstance(body, dict) or set(body) - NODE_UPDATE_FIELDS:
        raise ValueError(f"a node update is an object of {', '.join(sorted(NODE_UPDATE_FIELDS))}")
    _, node = found
    status = body.get("PingStatus", node.ping_status)
    if status not in PING_STATUSES:
        raise ValueError(f"PingStatus must be one of {', '.join(PING_STATUSES)}")
    try:
        last_ping = _to_datetime(body["LastPingDateTime"]) if "LastPingDateTime" in body else node.last_ping
        registered = _to_datetime(body["RegistrationDate"]) if "RegistrationDate" in body else node.registered
    except (SSMException, ValueError, OverflowError) as err:
        raise ValueError(f"dates are ISO 8601 or epoch seconds: {err}")
    node.ping_status, node.last_ping, node.registered = status, last_ping, registered
    return 200, node.as_json()


def list_nodes() -> dict[str, Any]:
    nodes = [n for b in _all_backends() for n in _nodes(b).values()]
    nodes.sort(key=lambda n: n.seq)
    gone = [d for b in _all_backends() for d in _deregistered(b)]
    return {"Nodes": [n.as_json() for n in nodes], "Deregistered": gone}


# --------------------------------------------------------------------------- GetParametersByPath


PARAMETER_BY_PATH_MAX_RESULTS = 10
PARAMETER_HIERARCHY_MAX_LEVELS = 15


def get_parameters_by_path(
    self: SimpleSystemManagerBackend,
    path: str,
    recursive: bool,
    filters: list[dict[str, Any]] | None = None,
    next_token: str | None = None,
    max_results: int = 10,
) -> tuple[list[Any], str | None]:
    """moto's, with AWS's validation (MaxResults 1..10, the path, no tag/Name/Path/Tier/
    DataType filters) and a NextToken that is a cursor on the parameter name, not an offset.
    With ParameterFilters, MaxResults counts the parameters looked at, as SSM does: a page
    can be short or empty and still carry a NextToken."""
    if max_results is None:
        max_results = PARAMETER_BY_PATH_MAX_RESULTS
    if not isinstance(max_results, int) or max_results < 1:
        raise ValidationException(_constraint("maxResults", max_results, "Member must have value greater than or equal to 1"))
    if max_results > PARAMETER_BY_PATH_MAX_RESULTS:
        raise ValidationException(
            _constraint("maxResults", max_results, f"Member must have value less than or equal to {PARAMETER_BY_PATH_MAX_RESULTS}")
        )
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValidationException(
            'The parameter doesn\'t meet the parameter name requirements. The parameter name must begin with a forward slash "/".'
        )
    if len([p for p in path.split("/") if p]) > PARAMETER_HIERARCHY_MAX_LEVELS:
        raise ValidationException(f"The parameter hierarchy depth is greater than {PARAMETER_HIERARCHY_MAX_LEVELS}.")
    for f in filters or []:
        key = f.get("Key", "") if isinstance(f, dict) else ""
        if key.startswith("tag:") or key == "DataType":
            raise InvalidFilterKey(f"The following filter key is not valid: {key}. Valid filter keys include: [Type, KeyId, Label].")
    self._validate_parameter_filters(filters, by_path=True)
    after = _decode_cursor(next_token) if next_token else ""
    if not isinstance(after, str):
        raise InvalidNextToken()
    prefix = path.rstrip("/") + "/"
    names = sorted(n for n in self._parameters.get_keys_beginning_with(prefix, recursive) if n > after)
    params = [self.get_parameter(n) for n in names]

    def matches(parameter: Any) -> bool:
        return bool(self._match_filters(parameter, filters))

    page, last = _page(params, matches, max_results, prefilter=bool(filters))
    return page, (None if last is None else _encode_cursor(last.name))


SimpleSystemManagerBackend.get_parameters_by_path = get_parameters_by_path  # type: ignore[method-assign]


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


# moto copies every table a transaction names, whole, so that it can roll back: a
# cost that grows with the table (tens of milliseconds per commit once the table holds
# thousands of records, hundreds at worst), which AWS does not have. Here the copy is
# of the items the transaction touches, restored on any failure; moto's own table
# copy becomes the table itself for the length of the call.
_table_copies_are_shallow = threading.local()
_moto_table_deepcopy = getattr(Table, "__deepcopy__", None)


def _table_deepcopy(self: Table, memo: dict[int, Any]) -> Any:
    if getattr(_table_copies_are_shallow, "on", False):
        return self
    if _moto_table_deepcopy is not None:
        return _moto_table_deepcopy(self, memo)
    clone = Table.__new__(Table)
    memo[id(self)] = clone
    for name, value in self.__dict__.items():
        setattr(clone, name, copy.deepcopy(value, memo))
    return clone


Table.__deepcopy__ = _table_deepcopy  # type: ignore[attr-defined]

_moto_backend_transact_write_items = DynamoDBBackend.transact_write_items


def _touched_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
    """(table, hash key, range key, a copy of the item or None) for each item named."""
    touched = []
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        table = backend.tables.get(op.get("TableName"))
        if table is None:
            continue
        attrs = op.get("Key") or op.get("Item") or {}
        if table.hash_key_attr not in attrs:
            continue
        hash_key = DynamoType(attrs[table.hash_key_attr])
        range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr in attrs else None
        touched.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
    return touched


def _transact_write_items_restoring_touched_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    touched = _touched_items(self, transact_items)
    _table_copies_are_shallow.on = True
    try:
        _moto_backend_transact_write_items(self, transact_items)
    except BaseException:
        for table, hash_key, range_key, item in reversed(touched):
            if item is None:
                table.delete_item(hash_key, range_key)
            elif range_key is not None:
                table.items[hash_key][range_key] = item
            else:
                table.items[hash_key] = item
        raise
    finally:
        _table_copies_are_shallow.on = False


DynamoDBBackend.transact_write_items = _transact_write_items_restoring_touched_items  # type: ignore[method-assign]

# Who wrote each parameter (principals.py) and AWS-managed keys (kms_keys.py).
principals.install()
kms_keys.install()


# --------------------------------------------------------------------------- WSGI wrapper


JSON_TARGET_SERVICES = {
    "AmazonSSM": "SSM",
    "DynamoDB_20120810": "DynamoDB",
    "DynamoDBStreams_20120810": "DynamoDBStreams",
    "TrentService": "KMS",
    "EC2WindowsMessageDeliveryService": "EC2Messages",
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


# moto's per-service apps, built ahead by a process that forks emulators
# (zygote.py), so that each emulator does not build them again.
PREBUILT_APPS: dict[str, Any] = {}


class Emulator:
    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.moto.app_instances.update(PREBUILT_APPS)
        self.aws_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        # Milliseconds each operation held the AWS lock: total and slowest.
        self.busy_ms: Counter[str] = Counter()
        self.slowest_ms: dict[str, float] = {}
        self.faults: list[Fault] = []
        self.latency_ms = 0
        self.jitter_ms = 0
        # The IAM requests of the service's calls (iam_calls.py; EMULATOR_IAM_CALLS_DIR).
        self.iam_calls = IamCallRecorder.from_env()

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
        self.iam_calls.observe(environ, body, operation, self.aws_lock)
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
            started = time.perf_counter()
            chunks: list[bytes] = []
            captured: dict[str, Any] = {}

            def capture(status: str, headers: list[Any], exc_info: Any = None) -> Any:
                captured["status"], captured["headers"] = status, headers
                return chunks.append

            result = (AGENT if AGENT.handles(environ) else self.moto)(environ, capture)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            principals.record_writer(operation, environ, body, str(captured.get("status", "")).startswith("2"))
            busy = (time.perf_counter() - started) * 1000
        with self.state_lock:
            self.busy_ms[operation] += busy
            self.slowest_ms[operation] = max(busy, self.slowest_ms.get(operation, 0.0))
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
            status, payload = self.route(method, path, raw, environ.get("REMOTE_ADDR", ""))
        except (ValueError, KeyError, TypeError) as err:
            status, payload = 400, {"error": "BadRequest", "message": str(err)}
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        content_type = "text/plain" if isinstance(payload, str) else "application/json"
        start_response(f"{status} {'OK' if status == 200 else 'Error'}", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def route(self, method: str, path: str, raw: bytes, peer: str = "") -> tuple[int, Any]:
        if path == "/_emulator/health" and method == "GET":
            return 200, "OK"
        handled = principals.route(method, path, raw)
        if handled is not None:
            return handled
        if path == "/_emulator/calls":
            with self.state_lock:
                if method == "GET":
                    return 200, dict(self.calls)
                if method == "DELETE":
                    self.calls.clear()
                    self.busy_ms.clear()
                    self.slowest_ms.clear()
                    return 200, {}
        if path == "/_emulator/busy" and method == "GET":
            with self.state_lock:
                return 200, {
                    op: {"calls": self.calls[op], "total_ms": round(ms, 1), "slowest_ms": round(self.slowest_ms[op], 1)}
                    for op, ms in self.busy_ms.items()
                }
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
            if not isinstance(body, dict):
                raise ValueError('register takes {"ActivationId", "ActivationCode", "InstanceName"}')
            with self.aws_lock:
                return register_instance(body, peer)
        if path == "/_emulator/nodes" and method == "GET":
            with self.aws_lock:
                return 200, list_nodes()
        if path.startswith("/_emulator/nodes/") and method in ("GET", "POST"):
            instance_id = path[len("/_emulator/nodes/") :]
            with self.aws_lock:
                if method == "GET":
                    found = _find_node(instance_id)
                    if found is None:
                        return 404, {"error": "InvalidInstanceId", "message": f"no managed node {instance_id}"}
                    return 200, found[1].as_json()
                return update_node(instance_id, json.loads(raw or b"{}"))
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
    emulator = Emulator()
    # moto's modules are hundreds of thousands of long-lived objects: left in the
    # collector's generations they make full collections pause every call for 100 ms
    # and more, a stall AWS does not have (its latency is set with /_emulator/latency).
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    run_simple(args.host, args.port, emulator, threaded=True, request_handler=EmulatorRequestHandler)


if __name__ == "__main__":
    main()
