"""The command line the tree checks of `make lint` share (tests/docs/check.py and
tests/layout/check.py): `--root DIR` (the repository, default this checkout), every
problem on stderr prefixed with the check's name and followed by their count.

Exit codes: 0 nothing found, 1 something found, 2 bad usage or an unreadable file.
Standard library only, as the checks are.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def run_check(
    argv: list[str],
    *,
    name: str,
    description: str | None,
    problems: Callable[[Path], list[str]],
    counted_as: str,
    all_good: str,
) -> int:
    """Runs `problems` on the repository `argv` names and reports as `name`: each problem,
    then "N `counted_as`" (exit 1); `all_good` when there is none (exit 0)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPOSITORY)
    args = parser.parse_args(argv)
    try:
        found = problems(args.root)
    except OSError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    for problem in found:
        print(f"{name}: {problem}", file=sys.stderr)
    if found:
        print(f"{name}: {len(found)} {counted_as}", file=sys.stderr)
        return 1
    print(f"{name}: {all_good}")
    return 0
