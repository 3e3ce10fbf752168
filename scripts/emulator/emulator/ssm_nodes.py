"""SSM managed nodes ("mi-..."), which moto lacks: made by the agent's
RegisterManagedInstance (agent_protocol.py) or POST /_emulator/register (node_control.py).

  * DescribeInstanceInformation with Filters (ActivationIds, AgentVersion,
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
  * A node's tags (ListTagsForResource / AddTagsToResource / RemoveTagsFromResource with
    ResourceType ManagedInstance) start as its activation's tags.
  * DeregisterManagedInstance removes the node and its tags (InvalidInstanceId for an
    unknown one, ValidationException for an ID that is not mi- + 17 hex); as in SSM the
    activation's RegistrationsCount does not go down and the slot is not given back.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import secrets
from typing import Any, Callable

from moto.core.responses import ActionResult, EmptyResult
from moto.ssm.exceptions import InvalidResourceId, SSMException, ValidationException
from moto.ssm.models import SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse

from .ssm_activations import Activation, activations
from .ssm_common import InvalidFilterKey, InvalidNextToken, all_backends, backend_state, constraint, decode_cursor, encode_cursor, iso, page


class InvalidInstanceId(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidInstanceId", message)


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
        return {k: iso(v) if isinstance(v, dt.datetime) else v for k, v in self.describe().items()}


def nodes(backend: SimpleSystemManagerBackend) -> dict[str, ManagedNode]:
    return backend_state(backend, "_vending_nodes", dict)


def deregistered(backend: SimpleSystemManagerBackend) -> list[dict[str, Any]]:
    return backend_state(backend, "_vending_deregistered", list)


def find_node(instance_id: str) -> tuple[SimpleSystemManagerBackend, ManagedNode] | None:
    for backend in all_backends():
        node = nodes(backend).get(instance_id)
        if node is not None:
            return backend, node
    return None


def new_node(backend: SimpleSystemManagerBackend, activation: Activation) -> ManagedNode:
    """Stores a node for a registration SSM accepted, tagged with the activation's tags."""
    stored = nodes(backend)
    node = ManagedNode(activation)
    while node.instance_id in stored or find_node(node.instance_id) is not None:
        node.instance_id = "mi-" + secrets.token_hex(9)[:17]
    stored[node.instance_id] = node
    tags = {t["Key"]: t["Value"] for t in activation.tags}
    if tags:
        backend._resource_tags["ManagedInstance"][node.instance_id] = tags
    return node


def _node_tags(backend: SimpleSystemManagerBackend, node: ManagedNode) -> dict[str, str]:
    return backend._resource_tags.get("ManagedInstance", {}).get(node.instance_id, {})  # type: ignore[no-any-return]


def _node_matcher(filters: list[Any], legacy: list[Any], known: dict[str, ManagedNode]) -> tuple[Any, bool]:
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
                constraint(f"instanceInformationFilterList.{i}.member.key", key, f"Member must satisfy enum value set: [{', '.join(LEGACY_FILTER_KEYS)}]")
            )
        specs.append((key, f.get("valueSet"), f"instanceInformationFilterList.{i}.member.valueSet"))
    for key, values, where in specs:
        if not isinstance(key, str) or not key:
            raise ValidationException(constraint(where + ".key", key, "Member must have length greater than or equal to 1"))
        if not isinstance(values, list) or not 1 <= len(values) <= 100:
            raise ValidationException(constraint(where + ".values", values, "Member must have length between 1 and 100"))
        if not all(isinstance(v, str) and v for v in values):
            raise ValidationException(constraint(where + ".values", values, "[Member must have length greater than or equal to 1]"))
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
                if not INSTANCE_ID.match(value) or value not in known:
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


def describe_instance_information(self: SimpleSystemManagerResponse) -> ActionResult:
    filters = self._get_param("Filters") or []
    legacy = self._get_param("InstanceInformationFilterList") or []
    max_results = self._get_param("MaxResults")
    token = self._get_param("NextToken")
    if max_results is None:
        max_results = 10
    if not isinstance(max_results, int) or max_results < 5:
        raise ValidationException(constraint("maxResults", max_results, "Member must have value greater than or equal to 5"))
    if max_results > 50:
        raise ValidationException(constraint("maxResults", max_results, "Member must have value less than or equal to 50"))
    backend = self.ssm_backend
    known = nodes(backend)
    matches, by_tag = _node_matcher(filters, legacy, known)
    after = decode_cursor(token) if token else 0
    if not isinstance(after, int):
        raise InvalidNextToken()
    ordered = sorted((n for n in known.values() if n.seq > after), key=lambda n: n.seq)
    taken, last = page(ordered, lambda n: matches(n, backend), max_results, by_tag)
    out: dict[str, Any] = {"InstanceInformationList": [n.describe() for n in taken]}
    if last is not None:
        out["NextToken"] = encode_cursor(last.seq)
    return ActionResult(out)


def deregister_managed_instance(self: SimpleSystemManagerResponse) -> ActionResult:
    instance_id = self._get_param("InstanceId")
    if not isinstance(instance_id, str) or not MANAGED_INSTANCE_ID.match(instance_id):
        raise ValidationException(
            constraint("instanceId", instance_id, "Member must satisfy regular expression pattern: (^mi-[0-9a-f]{17}$)|(^eks_c:[0-9A-Za-z][A-Za-z0-9\\-_]{0,99}_\\w{17}$)")
        )
    backend = self.ssm_backend
    node = nodes(backend).pop(instance_id, None)
    if node is None:
        raise InvalidInstanceId(f"Instance Id {instance_id} is not valid or does not exist")
    backend._resource_tags.get("ManagedInstance", {}).pop(instance_id, None)
    # SSM never gives the registration back: RegistrationsCount stays, the slot stays used.
    deregistered(backend).append(
        {"InstanceId": instance_id, "ActivationId": node.activation_id, "ComputerName": node.computer_name,
         "DeregisteredAt": iso(dt.datetime.now(dt.timezone.utc))}
    )
    activation = activations(backend).get(node.activation_id)
    if activation is not None:
        activation.deregistered += 1
    return EmptyResult()


def taggable_nodes(moto_validate_resource: Callable[..., str]) -> Callable[..., str]:
    """moto's resource check for the tagging calls, knowing the managed nodes (moto knows
    no node, so it refuses every ManagedInstance)."""

    def _validate_resource_type_and_id(self: SimpleSystemManagerBackend, resource_type: str, resource_id: str) -> str:
        if resource_type == "ManagedInstance":
            if resource_id in nodes(self):
                return resource_id
            raise InvalidResourceId()
        return moto_validate_resource(self, resource_type, resource_id)

    return _validate_resource_type_and_id
