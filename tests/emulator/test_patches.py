"""The table of moto's patches (scripts/emulator/emulator/patches.py) and its install().

In this process, not over the wire: each test installs into the test process's moto and
puts moto's attributes back afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "emulator"))
from emulator import patches  # noqa: E402

ABSENT = object()


@pytest.fixture
def moto_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[Any, Any]]:
    """moto's attributes as they were before the test, put back after it."""
    before = {(p.owner, p.name): p.owner.__dict__.get(p.name, ABSENT) for p in patches.PATCHES}
    monkeypatch.setattr(patches, "_installed", False)
    yield before
    for (owner, name), value in before.items():
        if value is ABSENT:
            if name in owner.__dict__:
                delattr(owner, name)
        else:
            setattr(owner, name, value)


def test_install_applies_every_patch_in_the_table(moto_restored: dict[Any, Any]) -> None:
    patches.install()
    for patch in patches.PATCHES:
        now = patch.owner.__dict__[patch.name]
        if patch.kind == patches.WRAPS:
            assert now is not moto_restored[(patch.owner, patch.name)], patch
            assert patch.new.__name__ in now.__qualname__, patch
        else:
            assert now is patch.new, patch


def test_a_second_install_wraps_nothing_twice(moto_restored: dict[Any, Any]) -> None:
    patches.install()
    first = {(p.owner, p.name): p.owner.__dict__[p.name] for p in patches.PATCHES}
    patches.install()
    assert {(p.owner, p.name): p.owner.__dict__[p.name] for p in patches.PATCHES} == first


def test_every_patch_says_why() -> None:
    assert all(len(p.why) > 20 for p in patches.PATCHES)
    assert len({(p.owner, p.name) for p in patches.PATCHES}) == len(patches.PATCHES)


def test_install_refuses_a_moto_that_is_not_as_the_table_says(moto_restored: dict[Any, Any]) -> None:
    """A moto upgrade that added an API the emulator adds: the start stops, naming it, and
    nothing of the table is applied (moto_restored takes the stand-in away again)."""
    first = patches.PATCHES[0]
    setattr(first.owner, first.name, lambda self: None)
    with pytest.raises(RuntimeError, match=f"moto has {first.owner.__name__}.{first.name}; the emulator adds it"):
        patches.install()
    for patch in patches.PATCHES[1:]:
        assert patch.owner.__dict__.get(patch.name, ABSENT) is moto_restored[(patch.owner, patch.name)], patch
