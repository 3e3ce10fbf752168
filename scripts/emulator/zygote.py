"""A warm emulator factory for test suites that start one emulator per test.

Importing moto and boto3 costs a Python process about two CPU-seconds, most of a
short test's work on two cores. This process pays it once, then forks a fresh,
independent emulator (its own state, port and log) per request: a forked child
shares the imported modules copy-on-write and starts in milliseconds. Each child is
exactly `server.py`'s emulator, provisioned as `provision.py` provisions it.

Protocol: one JSON object per line on stdin, one answer per line on stdout.
  {"start": {"port": N, "log": PATH, "env_file": PATH}}  -> {"pid": PID}
      The child serves on 127.0.0.1:N, logs to PATH, provisions itself once it
      answers, then writes provision.py's `export NAME=value` lines to env_file
      (atomically: the file appears complete, or "error: ..." on a failure).
  {"stop": PID}                                          -> {"stopped": PID}
When stdin closes (the test process ended, however it ended), every child still
running is killed and the factory exits.

Usage: python scripts/emulator/zygote.py
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.request

import provision
import server


# What every child would otherwise load again: botocore's service models for the
# provisioning clients, and moto's empty backends for the default account and Region.
WARM_SESSION = provision.new_session()
for _service in ("dynamodb", "kms", "iam"):
    WARM_SESSION.client(_service, endpoint_url="http://127.0.0.1:9")
del _service
for _service in ("dynamodb", "ssm", "kms", "iam", "sts"):
    server.PREBUILT_APPS[_service] = server.create_backend_app(_service)
del _service


def _serve_child(port: int, log: str, env_file: str) -> None:
    """In the forked child: the emulator on `port`, provisioned in a thread of its own."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    random.seed()  # the parent's generator state is every child's otherwise
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    endpoint = f"http://127.0.0.1:{port}"

    def provision_when_up() -> None:
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{endpoint}/_emulator/health", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            text = "".join(f"export {k}={v}\n" for k, v in provision.provision(endpoint, WARM_SESSION))
        except Exception as e:  # noqa: BLE001 - the test reads the reason
            text = f"error: {type(e).__name__}: {e}\n"
        with open(env_file + ".tmp", "w") as f:
            f.write(text)
        os.replace(env_file + ".tmp", env_file)

    threading.Thread(target=provision_when_up, daemon=True).start()
    server.main(["--port", str(port)])


def main() -> None:
    # Children are reaped as they exit; the factory only ever kills them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    gc.collect()
    gc.freeze()  # keeps the imported modules' pages shared with every child
    children: set[int] = set()
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            start = request["start"]
            pid = os.fork()
            if pid == 0:
                try:
                    _serve_child(int(start["port"]), start["log"], start["env_file"])
                finally:
                    os._exit(0)
            children.add(pid)
            answer = {"pid": pid}
        else:
            pid = int(request["stop"])
            if pid in children:
                children.discard(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            answer = {"stopped": pid}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    main()
