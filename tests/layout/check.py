#!/usr/bin/env python3
"""The layout check (`make lint`): the tree keeps the shape docs/DESIGN.md gives it.

Fails, naming what is wrong, when
  - the modules of lambda/src import each other in a circle: the graph's edges are the
    paths that start with `crate::`, `super::`, `self::` or a child module's name, in
    `use` declarations and in code; inline `#[cfg(test)] mod ... { }` blocks are left
    out (a test module may use whatever it tests);
  - a Rust file under lambda/src or bench/src is longer than MAX_LINES, not counting
    its trailing `#[cfg(test)] mod tests { ... }` block (a file that is wholly a test
    module, declared `#[cfg(test)] mod tests;`, is left out, here and in the graph);
  - an entry of TOO_LONG_FOR_NOW no longer needs to be there (it must then go).

Standard library only, so it runs before any virtualenv exists.
Usage: tests/layout/check.py [--root DIR]   (DIR: the repository, default this checkout)
Exit codes: 0 the layout holds, 1 a circle or a long file, 2 bad usage or an unreadable file.
"""

import re
import sys
from pathlib import Path

# tests/checks_cli.py, the command line both checks share (stdlib, beside this folder).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checks_cli import run_check  # noqa: E402

MAX_LINES = 600
CRATE_SRC = "lambda/src"
LONG_FILE_ROOTS = ("lambda/src", "bench/src")

# Files allowed over MAX_LINES for now, each with its reason. Every entry must go: the
# check fails once a listed file is short enough, so an entry cannot outlive its reason.
TOO_LONG_FOR_NOW: dict[str, str] = {}

TOKEN = re.compile(
    r"""
      (?P<line_comment>//[^\n]*)
    | (?P<block_comment>/\*)
    | (?P<raw_string>b?r(?P<hashes>\#*)")
    | (?P<string>b?"(?:\\.|[^"\\])*")
    | (?P<char>b?'(?:\\.|\\u\{[0-9a-fA-F]+\}|[^'\\])')
    """,
    re.X | re.S,
)
TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+\w+\s*\{")
USE = re.compile(r"\buse\s+([^;]*);")
PATH = re.compile(r"(?<![\w:])((?:[A-Za-z_]\w*)(?:\s*::\s*[A-Za-z_]\w*)+)")
MOD_DECL = re.compile(r"\bmod\s+([A-Za-z_]\w*)\s*;")
TEST_MODULE_FILE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([A-Za-z_]\w*)\s*;")


def test_module_files(top: Path) -> set[Path]:
    """The files that are wholly a test module (`#[cfg(test)] mod tests;` in their
    parent): like an inline test module, neither counted nor part of the graph."""
    found = set()
    for path in top.rglob("*.rs"):
        home = path.parent if path.stem in ("mod", "lib", "main") else path.with_suffix("")
        for name in TEST_MODULE_FILE.findall(strip_comments_and_strings(path.read_text())):
            found.update(p for p in (home / f"{name}.rs", home / name / "mod.rs") if p.exists())
    return found


def strip_comments_and_strings(text: str) -> str:
    """The text with comments, strings and char literals blanked (newlines kept)."""
    out, pos = [], 0
    blank = lambda s: re.sub(r"[^\n]", " ", s)  # noqa: E731
    while True:
        match = TOKEN.search(text, pos)
        if not match:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos : match.start()])
        if match.group("block_comment"):
            depth, end = 1, match.end()
            while depth and end < len(text):
                if text.startswith("/*", end):
                    depth, end = depth + 1, end + 2
                elif text.startswith("*/", end):
                    depth, end = depth - 1, end + 2
                else:
                    end += 1
        elif match.group("raw_string") is not None and match.group("raw_string"):
            close = '"' + match.group("hashes")
            end = text.find(close, match.end())
            end = len(text) if end < 0 else end + len(close)
        else:
            end = match.end()
        out.append(blank(text[match.start() : end]))
        pos = end


def matching_brace(text: str, open_at: int) -> int:
    """The index just past the `}` that closes the `{` at open_at (in stripped text)."""
    depth = 0
    for index in range(open_at, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def without_test_modules(code: str) -> str:
    """Stripped code with every inline `#[cfg(test)] mod x { ... }` blanked."""
    while match := TEST_MODULE.search(code):
        end = matching_brace(code, match.end() - 1)
        code = code[: match.start()] + re.sub(r"[^\n]", " ", code[match.start() : end]) + code[end:]
    return code


def counted_lines(text: str) -> int:
    """The file's lines, less a trailing `#[cfg(test)] mod tests { ... }` block."""
    code = strip_comments_and_strings(text)
    lines = len(text.splitlines())
    for match in TEST_MODULE.finditer(code):
        end = matching_brace(code, match.end() - 1)
        if code[end:].strip() == "":
            return code[: match.start()].count("\n")
    return lines


def module_name(path: Path, src: Path) -> tuple[str, ...]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def expand_use(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (aliases and globs dropped)."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    items, depth, start = [], 0, 0
    for index, char in enumerate(inner + ","):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            if inner[start:index]:
                items.append(inner[start:index])
            start = index + 1
    return [path for item in items for path in expand_use(prefix + item)]


def resolve(path: str, here: tuple[str, ...], children: set[str], modules: set) -> tuple[str, ...] | None:
    """The module a path leads to (its longest prefix that is a module of the crate)."""
    segments = [s for s in re.split(r"\s*::\s*", path) if s and s != "*"]
    if not segments:
        return None
    head, rest = segments[0], segments[1:]
    if head == "crate":
        base = ()
    elif head == "self":
        base = here
    elif head == "super":
        base = here[:-1]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif head in children:
        base, rest = here, segments
    else:
        return None
    found = base
    for segment in rest:
        if segment == "self":
            continue
        if found + (segment,) in modules:
            found = found + (segment,)
        else:
            break
    return found


def module_graph(root: Path) -> dict[tuple[str, ...], set[tuple[str, ...]]]:
    """Each module of the crate (by path, lib.rs is ()) and the modules it uses."""
    src = root / CRATE_SRC
    tests = test_module_files(src)
    files = {module_name(p, src): p for p in sorted(src.rglob("*.rs")) if p.name != "main.rs" and p not in tests}
    modules = set(files)
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for here, path in files.items():
        code = without_test_modules(strip_comments_and_strings(path.read_text()))
        children = {name for name in MOD_DECL.findall(code)} if here else set()
        paths = [p for tree in USE.findall(code) for p in expand_use(tree)]
        paths += PATH.findall(USE.sub(" ", code))
        targets = {resolve(p, here, children, modules) for p in paths}
        # A module using its ancestor (`super::x`) depends on what the ancestor defines:
        # an edge like any other, so a parent that re-exports its child closes a circle.
        graph[here] = {t for t in targets if t is not None and t != here}
    return graph


def cycles(graph: dict[tuple[str, ...], set[tuple[str, ...]]]) -> list[list[tuple[str, ...]]]:
    """One circle per strongly connected group of modules (Tarjan), as a closed path."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(set(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [circle_through(group, graph) for group in groups]


def circle_through(group: set, graph: dict) -> list:
    """A shortest closed path inside the group, from its first module back to it."""
    start = min(group)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for succ in sorted(graph[path[-1]] & group):
            if succ == start:
                return path + [start]
            if succ not in seen:
                seen.add(succ)
                paths.append(path + [succ])
    return sorted(group)


def display(module: tuple[str, ...]) -> str:
    return "crate::" + "::".join(module) if module else "crate"


def long_files(root: Path) -> list[str]:
    found = []
    for top in LONG_FILE_ROOTS:
        tests = test_module_files(root / top) if (root / top).exists() else set()
        for path in sorted(set((root / top).rglob("*.rs")) - tests):
            name = str(path.relative_to(root))
            lines = counted_lines(path.read_text())
            if lines > MAX_LINES and name not in TOO_LONG_FOR_NOW:
                found.append(f"{name} has {lines} lines besides its tests (at most {MAX_LINES}): split it")
    for name in sorted(TOO_LONG_FOR_NOW):
        path = root / name
        if not path.exists() or counted_lines(path.read_text()) <= MAX_LINES:
            found.append(f"{name} is {MAX_LINES} lines or fewer now: remove it from TOO_LONG_FOR_NOW in {__file__}")
    return found


def problems(root: Path) -> list[str]:
    found = []
    for circle in cycles(module_graph(root)):
        found.append("modules import each other in a circle: " + " -> ".join(display(m) for m in circle))
    return found + long_files(root)


def main(argv: list[str]) -> int:
    return run_check(
        argv,
        name="layout check",
        description=__doc__,
        problems=problems,
        counted_as="problem(s)",
        all_good=f"no import circle in {CRATE_SRC}; no Rust file over {MAX_LINES} lines besides its tests",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
