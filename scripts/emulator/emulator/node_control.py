"""The managed nodes' control endpoints (README.md, "Control endpoints"):

  POST /_emulator/register   an agent that registers and checks in, in one call
  GET  /_emulator/nodes      every node, and the deregistered ones
  GET  /_emulator/nodes/ID   one node
  POST /_emulator/nodes/ID   ages a node for tests

Each runs under the emulator's AWS lock, as the AWS calls on the same state do.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from moto.ssm.exceptions import SSMException

from .agent_protocol import AgentProtocol, Refused
from .ssm_common import all_backends, to_datetime
from .ssm_nodes import AGENT_VERSION, PING_STATUSES, PLATFORM_TYPES, deregistered, find_node, nodes

REGISTER_FIELDS = {"ActivationId", "ActivationCode", "InstanceName", "PlatformType", "PlatformName", "PlatformVersion", "IPAddress", "AgentVersion"}
NODE_UPDATE_FIELDS = {"PingStatus", "LastPingDateTime", "RegistrationDate"}


def register_instance(agent: AgentProtocol, body: dict[str, Any], source_ip: str = "") -> tuple[int, dict[str, Any]]:
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
        node = agent.register(activation_id, code)
    except Refused as refused:
        return 400, {"error": refused.code}
    name = str(body.get("InstanceName") or "") or "localhost"
    info = {k: str(body[k]) for k in ("PlatformType", "PlatformName", "PlatformVersion", "IPAddress", "AgentVersion") if body.get(k)}
    windows = info.setdefault("PlatformType", "Linux") == "Windows"
    info.setdefault("PlatformName", "Microsoft Windows Server 2022 Datacenter" if windows else "Amazon Linux")
    info.setdefault("PlatformVersion", "10.0.20348" if windows else "2023")
    info.setdefault("AgentVersion", AGENT_VERSION)
    info.setdefault("IPAddress", source_ip or "127.0.0.1")
    agent.check_in(node, {**info, "ComputerName": name})
    return 200, {"InstanceId": node.instance_id}


def update_node(instance_id: str, body: Any) -> tuple[int, dict[str, Any]]:
    """Ages a node for tests: PingStatus, LastPingDateTime, RegistrationDate."""
    found = find_node(instance_id)
    if found is None:
        return 404, {"error": "InvalidInstanceId", "message": f"no managed node {instance_id}"}
    if not isinstance(body, dict) or set(body) - NODE_UPDATE_FIELDS:
        raise ValueError(f"a node update is an object of {', '.join(sorted(NODE_UPDATE_FIELDS))}")
    _, node = found
    status = body.get("PingStatus", node.ping_status)
    if status not in PING_STATUSES:
        raise ValueError(f"PingStatus must be one of {', '.join(PING_STATUSES)}")
    try:
        last_ping = to_datetime(body["LastPingDateTime"]) if "LastPingDateTime" in body else node.last_ping
        registered = to_datetime(body["RegistrationDate"]) if "RegistrationDate" in body else node.registered
    except (SSMException, ValueError, OverflowError) as err:
        raise ValueError(f"dates are ISO 8601 or epoch seconds: {err}")
    node.ping_status, node.last_ping, node.registered = status, last_ping, registered
    return 200, node.as_json()


def list_nodes() -> dict[str, Any]:
    found = [n for b in all_backends() for n in nodes(b).values()]
    found.sort(key=lambda n: n.seq)
    gone = [d for b in all_backends() for d in deregistered(b)]
    return {"Nodes": [n.as_json() for n in found], "Deregistered": gone}


class NodeControl:
    """The routes above, for the emulator's control router."""

    def __init__(self, agent: AgentProtocol, aws_lock: threading.Lock) -> None:
        self.agent = agent
        self.aws_lock = aws_lock

    def route(self, method: str, path: str, raw: bytes, peer: str) -> tuple[int, Any] | None:
        """The answer to a node route; None for any other path."""
        if path == "/_emulator/register" and method == "POST":
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError('register takes {"ActivationId", "ActivationCode", "InstanceName"}')
            with self.aws_lock:
                return register_instance(self.agent, body, peer)
        if path == "/_emulator/nodes" and method == "GET":
            with self.aws_lock:
                return 200, list_nodes()
        if path.startswith("/_emulator/nodes/") and method in ("GET", "POST"):
            instance_id = path[len("/_emulator/nodes/") :]
            with self.aws_lock:
                if method == "GET":
                    found = find_node(instance_id)
                    if found is None:
                        return 404, {"error": "InvalidInstanceId", "message": f"no managed node {instance_id}"}
                    return 200, found[1].as_json()
                return update_node(instance_id, json.loads(raw or b"{}"))
        return None
