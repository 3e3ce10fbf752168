"""SSM GetParametersByPath as AWS validates and pages it (moto's is kinder).

moto's, plus AWS's validation (MaxResults 1..10, a Path that starts with / and has at
most 15 levels, no tag/Name/Path/Tier/DataType filters) and a NextToken that is a cursor
on the parameter name (results in name order), not an offset. With ParameterFilters,
MaxResults counts the parameters looked at, so pages can be short or empty and still
carry a NextToken. (Who wrote a parameter, LastModifiedUser: principals.py.)
"""

from __future__ import annotations

from typing import Any

from moto.ssm.exceptions import ValidationException
from moto.ssm.models import SimpleSystemManagerBackend

from .ssm_common import InvalidFilterKey, InvalidNextToken, constraint, decode_cursor, encode_cursor, page

PARAMETER_BY_PATH_MAX_RESULTS = 10
PARAMETER_HIERARCHY_MAX_LEVELS = 15


def get_parameters_by_path(
    self: SimpleSystemManagerBackend,
    path: str,
    recursive: bool,
    filters: list[dict[str, Any]] | None = None,
    next_token: str | None = None,
    max_results: int = 10,
) -> tuple[list[Any], str | None]:
    """moto's, with AWS's validation (MaxResults 1..10, the path, no tag/Name/Path/Tier/
    DataType filters) and a NextToken that is a cursor on the parameter name, not an offset.
    With ParameterFilters, MaxResults counts the parameters looked at, as SSM does: a page
    can be short or empty and still carry a NextToken."""
    if max_results is None:
        max_results = PARAMETER_BY_PATH_MAX_RESULTS
    if not isinstance(max_results, int) or max_results < 1:
        raise ValidationException(constraint("maxResults", max_results, "Member must have value greater than or equal to 1"))
    if max_results > PARAMETER_BY_PATH_MAX_RESULTS:
        raise ValidationException(
            constraint("maxResults", max_results, f"Member must have value less than or equal to {PARAMETER_BY_PATH_MAX_RESULTS}")
        )
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValidationException(
            'The parameter doesn\'t meet the parameter name requirements. The parameter name must begin with a forward slash "/".'
        )
    if len([p for p in path.split("/") if p]) > PARAMETER_HIERARCHY_MAX_LEVELS:
        raise ValidationException(f"The parameter hierarchy depth is greater than {PARAMETER_HIERARCHY_MAX_LEVELS}.")
    for f in filters or []:
        key = f.get("Key", "") if isinstance(f, dict) else ""
        if key.startswith("tag:") or key == "DataType":
            raise InvalidFilterKey(f"The following filter key is not valid: {key}. Valid filter keys include: [Type, KeyId, Label].")
    self._validate_parameter_filters(filters, by_path=True)
    after = decode_cursor(next_token) if next_token else ""
    if not isinstance(after, str):
        raise InvalidNextToken()
    prefix = path.rstrip("/") + "/"
    names = sorted(n for n in self._parameters.get_keys_beginning_with(prefix, recursive) if n > after)
    params = [self.get_parameter(n) for n in names]

    def matches(parameter: Any) -> bool:
        return bool(self._match_filters(parameter, filters))

    taken, last = page(params, matches, max_results, prefilter=bool(filters))
    return taken, (None if last is None else encode_cursor(last.name))
