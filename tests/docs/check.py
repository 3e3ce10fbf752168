#!/usr/bin/env python3
"""The documentation check (`make lint`): the docs keep up with the code.

Fails, printing what is missing, when
  - a `VENDING_*` setting is read by the service (a string literal in lambda/src) or by
    a script (scripts/*.sh, scripts/*.ps1) and named nowhere in README.md or docs/*.md;
  - a route of openapi.yaml (`METHOD /path`) is named nowhere in README.md or docs/*.md;
  - a file under lambda/src is missing from the module map (the `# Layout` section of
    lambda/src/lib.rs), or the map names a file that does not exist;
  - a relative link in README.md or docs/*.md leads to no file, or to no heading of
    a Markdown page (anchors as GitHub makes them).

Standard library only, so it runs before any virtualenv exists.
Usage: tests/docs/check.py [--root DIR]   (DIR: the repository, default this checkout)
Exit codes: 0 all documented, 1 something missing, 2 bad usage or an unreadable file.
"""

import functools
import re
import sys
from pathlib import Path

# tests/checks_cli.py, the command line both checks share (stdlib, beside this folder).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checks_cli import run_check  # noqa: E402

# VENDING_* names the code reads that are deliberately undocumented, each with its reason.
# Nothing is excluded silently: a name is skipped only when it is listed here.
INTERNAL_SETTINGS: dict[str, str] = {
    "VENDING_PORT": "scripts/local.sh's own variable, set from LOCAL_VENDING_PORT (documented); "
    "never read from the environment",
}

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
SETTING_LITERAL = re.compile(r'"(VENDING_[A-Z0-9_]+)')
SETTING_WORD = re.compile(r"(?<![A-Za-z0-9_])(VENDING_[A-Z0-9_]+)")


def service_settings(root: Path) -> dict[str, str]:
    """Every VENDING_* string literal under lambda/src, with the first file naming it."""
    found: dict[str, str] = {}
    for path in sorted((root / "lambda/src").rglob("*.rs")):
        for name in SETTING_LITERAL.findall(path.read_text()):
            found.setdefault(name, str(path.relative_to(root)))
    return found


def script_settings(root: Path) -> dict[str, str]:
    """Every VENDING_* name the scripts use, with the first file naming it."""
    found: dict[str, str] = {}
    scripts = sorted([*(root / "scripts").glob("*.sh"), *(root / "scripts").glob("*.ps1")])
    for path in scripts:
        for name in SETTING_WORD.findall(path.read_text()):
            found.setdefault(name, str(path.relative_to(root)))
    return found


def openapi_routes(root: Path) -> list[str]:
    """`METHOD /path` for every operation under openapi.yaml's `paths:` (two-space keys)."""
    routes, path, in_paths = [], None, False
    for line in (root / "openapi.yaml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            in_paths = line.rstrip() == "paths:"
            continue
        if not in_paths:
            continue
        key = re.fullmatch(r"( +)([^:]+):\s*", line)
        if not key:
            continue
        indent, name = len(key.group(1)), key.group(2).strip("'\"")
        if indent == 2:
            path = name
        elif indent == 4 and path is not None and name in HTTP_METHODS:
            routes.append(f"{name.upper()} {path}")
    return routes


def doc_pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def docs_text(root: Path) -> str:
    return "\n".join(page.read_text() for page in doc_pages(root))


@functools.cache
def anchors(page: Path) -> frozenset[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped,
    spaces to hyphens, `-1`, `-2`, ... on repeats); code blocks hold no headings."""
    found, seen, fenced = set(), {}, False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6} +(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            repeat = seen.get(slug, 0)
            seen[slug] = repeat + 1
            found.add(slug if repeat == 0 else f"{slug}-{repeat}")
    return frozenset(found)


def broken_links(root: Path) -> list[str]:
    broken = []
    for page in doc_pages(root):
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path) if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(root)} links to {link}: no such file")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{page.relative_to(root)} links to {link}: no such heading")
    return broken


def route_documented(route: str, text: str) -> bool:
    # `GET /` must not count as documented by `GET /activation`: the path ends there.
    return re.search(re.escape(route) + r"(?![A-Za-z0-9_/{}.-])", text) is not None


def module_map(root: Path) -> set[str]:
    """The files the `# Layout` section of lambda/src/lib.rs names, e.g. `aws/nodes.rs`."""
    doc = []
    for line in (root / "lambda/src/lib.rs").read_text().splitlines():
        if not line.startswith("//!"):
            break
        doc.append(line[3:])
    section = re.split(r"^ ?# Layout\s*$", "\n".join(doc), maxsplit=1, flags=re.M)
    if len(section) < 2:
        return set()
    layout = re.split(r"^ ?# ", section[1], maxsplit=1, flags=re.M)[0]
    return set(re.findall(r"^ ?- `([a-z0-9_/]+\.rs)`", layout, flags=re.M))


def module_files(root: Path) -> set[str]:
    src = root / "lambda/src"
    return {str(path.relative_to(src)) for path in src.rglob("*.rs")}


def problems(root: Path) -> list[str]:
    text = docs_text(root)
    documented = set(SETTING_WORD.findall(text))
    found = []
    settings = {**script_settings(root), **service_settings(root)}
    for name, where in sorted(settings.items()):
        if name not in documented and name not in INTERNAL_SETTINGS:
            found.append(f"setting {name} (read in {where}) is named nowhere in README.md or docs/*.md")
    for route in openapi_routes(root):
        if not route_documented(route, text):
            found.append(f"route `{route}` (openapi.yaml) is named nowhere in README.md or docs/*.md")
    mapped, files = module_map(root), module_files(root)
    for name in sorted(files - mapped):
        found.append(f"module lambda/src/{name} is missing from the `# Layout` map in lambda/src/lib.rs")
    for name in sorted(mapped - files):
        found.append(f"the `# Layout` map in lambda/src/lib.rs names lambda/src/{name}, which does not exist")
    return found + broken_links(root)


def main(argv: list[str]) -> int:
    return run_check(
        argv,
        name="docs check",
        description=__doc__,
        problems=problems,
        counted_as="missing",
        all_good="every VENDING_* setting, openapi.yaml route and module is documented; every link leads somewhere",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
