"""The fault-injection control plane: faults and network latency for the AWS calls.

  GET/POST/DELETE /_emulator/faults    the active faults (a fault's fields: README.md)
  GET/POST/DELETE /_emulator/latency   network time added to each AWS call

What they do to one call is decided when it arrives (FaultPlane.plan, under the state
lock); app.py sleeps the delays outside the AWS lock and answers the error, or hangs up
(ConnectionDropped: FIN, ConnectionReset: RST) through EmulatorRequestHandler.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler

CONNECTION_ERRORS = ("ConnectionDropped", "ConnectionReset")
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


class FaultPlane:
    """The active faults and the network latency, guarded by the emulator's state lock."""

    def __init__(self, state_lock: threading.Lock) -> None:
        self.state_lock = state_lock
        self.faults: list[Fault] = []
        self.latency_ms = 0
        self.jitter_ms = 0

    def plan(self, operation: str) -> Plan:
        """Network time and the faults for one call (the caller holds the state lock)."""
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

    def route(self, method: str, path: str, raw: bytes) -> tuple[int, Any] | None:
        """The answer to /_emulator/faults and /_emulator/latency; None for anything else."""
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
        return None


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
