"""SSM's tag alphabet, which moto does not check.

A TagList (CreateActivation, AddTagsToResource): at most 1000 tags; keys 1-128 and values
0-256 characters of letters, digits, spaces and _.:/=+-@; no key that starts with aws:.
DefaultInstanceName follows the same alphabet (ssm_activations.py).
"""

from __future__ import annotations

import unicodedata
from typing import Any, Callable

from moto.core.responses import ActionResult
from moto.ssm.exceptions import ValidationException
from moto.ssm.responses import SimpleSystemManagerResponse

from .ssm_common import constraint

# SSM's tag alphabet (TagKey, TagValue and DefaultInstanceName in the service model).
TAG_PATTERN = r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$"
TAG_PUNCTUATION = frozenset("_.:/=+-@")


def tag_text_ok(text: str) -> bool:
    """Python's re has no \\p{..}: letters, separators and numbers by Unicode category."""
    return all(unicodedata.category(c)[0] in "LZN" or c in TAG_PUNCTUATION for c in text)


def validate_tags(tags: Any) -> None:
    """What SSM refuses in a TagList (CreateActivation, AddTagsToResource)."""
    if not isinstance(tags, list):
        raise ValidationException("Tags must be a list")
    if len(tags) > 1000:
        raise ValidationException(constraint("tags", f"[{len(tags)} tags]", "Member must have length less than or equal to 1000"))
    for i, tag in enumerate(tags, 1):
        key = tag.get("Key") if isinstance(tag, dict) else None
        value = tag.get("Value") if isinstance(tag, dict) else None
        if not isinstance(key, str) or not 1 <= len(key) <= 128:
            raise ValidationException(constraint(f"tags.{i}.member.key", key, "Member must have length between 1 and 128"))
        if not tag_text_ok(key):
            raise ValidationException(
                constraint(f"tags.{i}.member.key", key, f"Member must satisfy regular expression pattern: {TAG_PATTERN}")
            )
        if key.lower().startswith("aws:"):
            raise ValidationException(f"Tag keys beginning with 'aws:' are reserved: {key}")
        if not isinstance(value, str) or len(value) > 256:
            raise ValidationException(constraint(f"tags.{i}.member.value", value, "Member must have length less than or equal to 256"))
        if not tag_text_ok(value):
            raise ValidationException(
                constraint(f"tags.{i}.member.value", value, f"Member must satisfy regular expression pattern: {TAG_PATTERN}")
            )


def validating_add_tags_to_resource(moto_add_tags_to_resource: Callable[..., Any]) -> Callable[..., Any]:
    """moto's AddTagsToResource, after SSM's checks of the TagList."""

    def add_tags_to_resource(self: SimpleSystemManagerResponse) -> ActionResult:
        validate_tags(self._get_param("Tags"))
        return moto_add_tags_to_resource(self)  # type: ignore[no-any-return]

    return add_tags_to_resource
