"""Local AWS emulator: moto server plus what moto lacks, over the real AWS wire protocol.

The rule: the emulator is never kinder than AWS, and it can fail in every way AWS does.
It serves DynamoDB, SSM, KMS, IAM and STS on one port, with SSM activations, managed
nodes and the SSM Agent's own protocol added, and control endpoints (/_emulator/...)
for tests: faults, latency, call counts, node registration and aging, principals.

scripts/emulator/README.md documents every control endpoint and setting; the package
beside this file (emulator/) holds the code, and emulator/patches.py every patch of moto
with its reason.

Environment: LOCAL_EMULATOR_PORT (the default --port, 24660), EMULATOR_IAM_CALLS_DIR
(record what IAM the service's calls ask: emulator/iam_calls.py), EMULATOR_QUOTAS
(`aws-defaults`: AWS's request quotas as token buckets for the whole run: emulator/quotas.py).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys

# The emulator's package, next to this file (also when imported, by zygote.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moto.moto_server.werkzeug_app import create_backend_app  # noqa: E402,F401  (zygote.py builds apps with it)
from werkzeug.serving import run_simple  # noqa: E402

from emulator.app import PREBUILT_APPS, Emulator  # noqa: E402,F401  (zygote.py fills PREBUILT_APPS)
from emulator.faults import EmulatorRequestHandler  # noqa: E402
from emulator.patches import install  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCAL_EMULATOR_PORT", "24660")))
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    install()
    try:
        emulator = Emulator()
    except ValueError as err:  # a bad setting (EMULATOR_QUOTAS): named, at start
        parser.error(str(err))
    # moto's modules are hundreds of thousands of long-lived objects: left in the
    # collector's generations they make full collections pause every call for 100 ms
    # and more, a stall AWS does not have (its latency is set with /_emulator/latency).
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    run_simple(args.host, args.port, emulator, threaded=True, request_handler=EmulatorRequestHandler)


if __name__ == "__main__":
    main()
