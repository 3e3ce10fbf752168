r"""Checks that the boot scripts accept exactly the instance and pool names the
service accepts (lambda/src/pool/state.rs: valid_instance_name, valid_pool_name).

  names.py WINDOWS_PATTERNS_JSON LINUX_VERDICTS_FILE

WINDOWS_PATTERNS_JSON is `ps_check.py patterns` output (.NET patterns, run here with
Python's re, which reads these constructs the same way once .NET's \z, the very end of
the string, is written as Python's \Z; PowerShell's -match ignores case, so
re.IGNORECASE). Every name the service accepts is also tried with a trailing newline,
which the Windows patterns must refuse ($ would accept it). LINUX_VERDICTS_FILE has one "kind<TAB>name<TAB>0|1" line per
name in NAMES, from bootstrap-linux.sh's own functions. Prints each disagreement;
exit 1 if there is any.
"""

from __future__ import annotations

import json
import re
import sys

L63 = "b" * 63
NAMES = {
    "instance": [
        "web01", "WEB-01", "web_01", "_web", "web_", "a", "9", "db.example.internal", "WIN_SRV-01." + L63 + ".example",
        ".".join([L63] * 3) + "." + "c" * 61, ".".join([L63] * 3) + "." + "c" * 62,
        "web:01", "a..b", "-web", "web-", "web.", ".web", "a b", "b" * 64, "", "web/01", "wéb", "a.-b", "a.b-",
        "localhost", "ip-10-0-0-1", "x" * 254,
    ],
    "pool": ["default", "web", "_web-01", "-x", "a" * 64, "a" * 65, "web.prod", "a/b", "", "web prod", "wéb"],
}


def service_instance(name: str) -> bool:
    return (
        0 < len(name.encode()) <= 253
        and all(
            label
            and len(label.encode()) <= 63
            and not label.startswith("-")
            and not label.endswith("-")
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
            for label in name.split(".")
        )
    )


def service_pool(name: str) -> bool:
    return 0 < len(name.encode()) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)


def python_pattern(dotnet: str) -> str:
    r"""A .NET pattern for Python's re: .NET's \z (end of string) is Python's \Z."""
    return re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", dotnet)


def main() -> int:
    windows = json.loads(open(sys.argv[1], encoding="utf-8").read())
    linux = {}
    for line in open(sys.argv[2], encoding="utf-8"):
        kind, name, verdict = line.rstrip("\n").split("\t")
        linux[(kind, name)] = verdict == "1"
    service = {"instance": service_instance, "pool": service_pool}
    pattern = {"instance": python_pattern(windows["Instance"]), "pool": python_pattern(windows["Pool"])}
    bad = 0
    for kind, names in NAMES.items():
        for name in names:
            want = service[kind](name)
            win = name != "" and re.search(pattern[kind], name, re.IGNORECASE) is not None
            lin = linux.get((kind, name))
            if win != want or lin != want:
                bad += 1
                print(f"{kind} {name!r}: service {want}, Windows {win}, Linux {lin}")
            if want and re.search(pattern[kind], name + "\n", re.IGNORECASE) is not None:
                bad += 1
                print(f"{kind} {name + chr(10)!r}: the Windows pattern accepts a trailing newline")
    print(f"{sum(map(len, NAMES.values()))} names checked, {bad} disagreements")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--list":
        for kind, names in NAMES.items():
            for name in names:
                print(f"{kind}\t{name}")
        sys.exit(0)
    sys.exit(main())
