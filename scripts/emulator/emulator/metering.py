"""What the emulator counts of the AWS calls, and how long each held it.

  GET    /_emulator/calls   {"DynamoDB.UpdateItem": n, ...}; DELETE resets (busy too)
  GET    /_emulator/busy    {"DynamoDB.UpdateItem": {"calls", "total_ms", "slowest_ms"}, ...}:
                            how long each operation held the AWS lock (one call at a
                            time), to tell the emulator's own cost from the service's
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class CallMeter:
    """Calls and busy times per operation, guarded by the emulator's state lock."""

    def __init__(self, state_lock: threading.Lock) -> None:
        self.state_lock = state_lock
        self.calls: Counter[str] = Counter()
        # Milliseconds each operation held the AWS lock: total and slowest.
        self.busy_ms: Counter[str] = Counter()
        self.slowest_ms: dict[str, float] = {}

    def count(self, operation: str) -> None:
        """One more call (the caller holds the state lock)."""
        self.calls[operation] += 1

    def held(self, operation: str, busy: float) -> None:
        """A call held the AWS lock for `busy` milliseconds."""
        with self.state_lock:
            self.busy_ms[operation] += busy
            self.slowest_ms[operation] = max(busy, self.slowest_ms.get(operation, 0.0))

    def route(self, method: str, path: str) -> tuple[int, Any] | None:
        """The answer to /_emulator/calls and /_emulator/busy; None for anything else."""
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
        return None
