"""What the SSM extensions share: SSM's error codes moto lacks, its validation message,
cursor NextTokens and pages, dates, and the emulator's state kept on moto's backends."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any, Callable, Iterable, TypeVar

from moto.ssm.exceptions import SSMException, ValidationException
from moto.ssm.models import SimpleSystemManagerBackend, ssm_backends

T = TypeVar("T")


class InvalidNextToken(SSMException):
    def __init__(self) -> None:
        super().__init__("InvalidNextToken", "The specified token isn't valid.")


class InvalidFilterKey(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidFilterKey", message)


def constraint(where: str, value: Any, rule: str) -> str:
    """SSM's ValidationException message for one field."""
    return f"1 validation error detected: Value '{value}' at '{where}' failed to satisfy constraint: {rule}"


def encode_cursor(position: Any) -> str:
    """An opaque NextToken that names the last item a page covered, never an offset: an
    item deleted (or added before it) between two pages does not shift the next page."""
    return base64.urlsafe_b64encode(json.dumps({"after": position}).encode()).decode()


def decode_cursor(token: Any) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(str(token).encode()))["after"]
    except Exception:
        raise InvalidNextToken()


def page(items: list[Any], matches: Any, max_results: int, prefilter: bool) -> tuple[list[Any], Any]:
    """One page of `items` (in cursor order, already past the token's cursor) and the last
    item it covered (None when nothing is left). prefilter: MaxResults counts the items
    looked at, as SSM does for tag and parameter filters, so a page may be short or empty."""
    if prefilter:
        window = items[:max_results]
        return [i for i in window if matches(i)], (window[-1] if len(items) > max_results else None)
    found = [i for i in items if matches(i)]
    taken = found[:max_results]
    return taken, (taken[-1] if len(found) > max_results else None)


def to_datetime(value: Any) -> dt.datetime:
    """A request's timestamp: epoch seconds (number or string) or ISO 8601."""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, str):
        try:
            return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)
        except ValueError:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    raise ValidationException("ExpirationDate is not a valid timestamp")


def iso(when: dt.datetime) -> str:
    """A date for the control endpoints: ISO 8601 UTC, milliseconds."""
    return when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def backend_state(backend: SimpleSystemManagerBackend, attribute: str, empty: Callable[[], T]) -> T:
    """The emulator's own state kept on a moto backend (one per account and Region)."""
    if not hasattr(backend, attribute):
        setattr(backend, attribute, empty())
    return getattr(backend, attribute)  # type: ignore[no-any-return]


def all_backends() -> Iterable[SimpleSystemManagerBackend]:
    for account_backends in ssm_backends.values():
        yield from account_backends.values()
