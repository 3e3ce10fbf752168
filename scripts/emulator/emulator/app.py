"""The emulator as a WSGI app: moto behind the AWS lock, with counts, latency, faults,
the agent's protocol and the control endpoints around it.

One AWS call: its body is read once (wire.request_body); it counts and gets its plan
(faults.FaultPlane.plan) under the state lock; the network time and "before" delays are
slept outside every lock; a "before" fault answers its error (or hangs up) without the
call being applied; otherwise, under the AWS lock, the call meets AWS's request quotas
when they are on (quotas.py: over quota it answers AWS's throttling error, not applied),
then runs (agent_protocol.py for the agent's own calls, moto for the rest; the writer of
a parameter recorded, principals.py), its time under the lock metered; then the "after" delays, and an "after" fault replaces
the answer the call produced. Every AWS call runs under that one lock, so conditional
writes are as atomic here as they are in DynamoDB (moto's server is threaded and would
otherwise race). Control endpoints (/_emulator/...) take no latency, count nothing and
meet no fault.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterable

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from . import principals
from .agent_protocol import AgentProtocol, Ssm
from .faults import CONNECTION_ERRORS, DropConnection, FaultPlane
from .iam_calls import Recorder as IamCallRecorder
from .metering import CallMeter
from .node_control import NodeControl
from .quotas import Quotas, apply_body
from .ssm_activations import find_activation
from .ssm_nodes import find_node, new_node
from .wire import aws_error, operation_of, protocol_headers, request_body

# moto's per-service apps, built ahead by a process that forks emulators
# (zygote.py), so that each emulator does not build them again.
PREBUILT_APPS: dict[str, Any] = {}


class Emulator:
    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.moto.app_instances.update(PREBUILT_APPS)
        self.aws_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.meter = CallMeter(self.state_lock)
        self.faults = FaultPlane(self.state_lock)
        # AWS's request quotas as token buckets: off unless EMULATOR_QUOTAS or
        # POST /_emulator/quotas turns them on (quotas.py).
        self.quotas = Quotas.from_env()
        # The IAM requests of the service's calls (iam_calls.py; EMULATOR_IAM_CALLS_DIR).
        self.iam_calls = IamCallRecorder.from_env()
        # The agent's own protocol (RegisterManagedInstance, RequestManagedInstanceRoleToken,
        # UpdateInstanceInformation, the worker's polling): agent_protocol.py.
        self.agent = AgentProtocol(Ssm(find_activation=find_activation, new_node=new_node, find_node=find_node))
        self.nodes = NodeControl(self.agent, self.aws_lock)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_emulator/"):
            return self.control(environ, start_response, path)
        body = request_body(environ)
        operation = operation_of(environ)
        self.iam_calls.observe(environ, body, operation, self.aws_lock)
        with self.state_lock:
            self.meter.count(operation)
            plan = self.faults.plan(operation)
        fault = plan.error
        time.sleep(plan.before_s)
        if fault is not None and fault.when == "before":
            if fault.error in CONNECTION_ERRORS:
                raise DropConnection(reset=fault.error == "ConnectionReset")
            time.sleep(plan.return_s)
            return aws_error(start_response, fault.status, fault.error, operation, environ, body, fault)
        with self.aws_lock:
            # AWS's request quotas, when on (quotas.py): a call over quota is not applied.
            verdict = self.quotas.admit(operation, environ, body)
            if verdict.refusal is None:
                started = time.perf_counter()
                if verdict.body is not None:
                    apply_body(environ, verdict.body)
                chunks: list[bytes] = []
                captured: dict[str, Any] = {}

                def capture(status: str, headers: list[Any], exc_info: Any = None) -> Any:
                    captured["status"], captured["headers"] = status, headers
                    return chunks.append

                result = (self.agent if self.agent.handles(environ) else self.moto)(environ, capture)
                try:
                    chunks.extend(result)
                finally:
                    if hasattr(result, "close"):
                        result.close()
                principals.record_writer(operation, environ, body, str(captured.get("status", "")).startswith("2"))
                busy = (time.perf_counter() - started) * 1000
        if verdict.refusal is not None:
            time.sleep(plan.return_s)
            return verdict.refusal.answer(start_response, operation, environ, body)
        captured["headers"], chunks = self.quotas.finish(verdict, captured["status"], captured["headers"], chunks)
        self.meter.held(operation, busy)
        time.sleep(plan.after_s)
        if fault is not None:  # when == "after": the call is applied, its answer is lost
            if fault.error in CONNECTION_ERRORS:
                raise DropConnection(reset=fault.error == "ConnectionReset")
            time.sleep(plan.return_s)
            return aws_error(start_response, fault.status, fault.error, operation, environ, body, fault)
        time.sleep(plan.return_s)
        start_response(captured["status"], protocol_headers(environ, captured["status"], captured["headers"]))
        return chunks

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
        """The control endpoints (README.md): each module answers its own paths."""
        if path == "/_emulator/health" and method == "GET":
            return 200, "OK"
        for answer in (
            lambda: principals.route(method, path, raw),
            lambda: self.meter.route(method, path),
            lambda: self.faults.route(method, path, raw),
            lambda: self.quotas.route(method, path, raw),
            lambda: self.nodes.route(method, path, raw, peer),
        ):
            handled = answer()
            if handled is not None:
                return handled
        return 404, {"error": "NotFound", "message": f"{method} {path}"}
