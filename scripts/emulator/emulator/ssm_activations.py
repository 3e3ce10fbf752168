"""SSM hybrid activations, which moto lacks: CreateActivation, DescribeActivations
(filters, pagination), DeleteActivation, with AWS's validation.

CreateActivation: IamRole the name of an existing IAM role (not an ARN or path),
RegistrationLimit 1..1000, ExpirationDate in the future and within 30 days (default 24
hours), Description at most 256 characters, DefaultInstanceName and Tags in SSM's tag
alphabet (ssm_tags.py). The code is 20 characters of base64's alphabet, '+' and '/'
included, as real codes are. DescribeActivations: filters ActivationIds,
DefaultInstanceName, IamRole (another key: InvalidFilter, activations or none),
MaxResults 1..50, a NextToken that is a cursor in creation order.
DeleteActivation: InvalidActivationId for an ID that is not a UUID, InvalidActivation
for an unknown (or already deleted) one; the nodes it registered stay.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import Any, Iterable

from moto.core.responses import ActionResult, EmptyResult
from moto.iam.models import iam_backends
from moto.ssm.exceptions import SSMException, ValidationException
from moto.ssm.models import SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse

from .ssm_common import InvalidNextToken, all_backends, backend_state, constraint, decode_cursor, encode_cursor, to_datetime
from .ssm_tags import TAG_PATTERN, tag_text_ok, validate_tags

MAX_ACTIVATION_LIFETIME = dt.timedelta(days=30)
CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class InvalidActivation(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidActivation", message)


class InvalidActivationId(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidActivationId", message)


class InvalidFilter(SSMException):
    def __init__(self, message: str) -> None:
        super().__init__("InvalidFilter", message)


class Activation:
    def __init__(
        self,
        account_id: str,
        iam_role: str,
        limit: int,
        expires: dt.datetime,
        description: str | None,
        default_instance_name: str | None,
        tags: list[dict[str, str]],
    ) -> None:
        self.account_id = account_id
        self.activation_id = str(uuid.uuid4())
        # Real codes are 20 characters of base64's alphabet, '+' and '/' included.
        self.code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(20))
        self.iam_role = iam_role
        self.limit = limit
        self.registrations = 0
        self.expires = expires
        self.created = dt.datetime.now(dt.timezone.utc)
        self.description = description
        self.default_instance_name = default_instance_name
        self.tags = tags
        self.instances: list[str] = []
        self.deregistered = 0  # registrations whose node was deregistered (reporting only)

    @property
    def expired(self) -> bool:
        return dt.datetime.now(dt.timezone.utc) >= self.expires

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ActivationId": self.activation_id,
            "IamRole": self.iam_role,
            "RegistrationLimit": self.limit,
            "RegistrationsCount": self.registrations,
            "ExpirationDate": self.expires,
            "Expired": self.expired,
            "CreatedDate": self.created,
            "Tags": self.tags,
        }
        if self.description is not None:
            out["Description"] = self.description
        if self.default_instance_name is not None:
            out["DefaultInstanceName"] = self.default_instance_name
        return out


def activations(backend: SimpleSystemManagerBackend) -> dict[str, Activation]:
    return backend_state(backend, "_vending_activations", dict)


def deleted_activations(backend: SimpleSystemManagerBackend) -> set[str]:
    return backend_state(backend, "_vending_deleted_activations", set)


def find_activation(activation_id: str) -> tuple[SimpleSystemManagerBackend, Activation] | None:
    for backend in all_backends():
        activation = activations(backend).get(activation_id)
        if activation is not None:  # deleted activations are gone from here too
            return backend, activation
    return None


def _role_exists(account_id: str, role_name: str) -> bool:
    for partition_backend in iam_backends[account_id].values():
        try:
            partition_backend.get_role(role_name)
            return True
        except Exception:  # moto raises its own NotFound type
            continue
    return False


def create_activation(self: SimpleSystemManagerResponse) -> ActionResult:
    role = self._get_param("IamRole")
    limit = self._get_param("RegistrationLimit", 1)
    expiry_raw = self._get_param("ExpirationDate")
    now = dt.datetime.now(dt.timezone.utc)
    if not role:
        raise ValidationException("1 validation error detected: IamRole must not be null")
    if ":" in role or "/" in role:
        raise ValidationException("IamRole must be the name of an IAM role, not an ARN or path")
    if not _role_exists(self.current_account, role):
        raise ValidationException(f"Nonexistent role or missing ssm service principal in trust policy: {role}")
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValidationException(
            "1 validation error detected: Value at 'registrationLimit' failed to satisfy "
            "constraint: Member must have value between 1 and 1000"
        )
    expires = now + dt.timedelta(hours=24) if expiry_raw is None else to_datetime(expiry_raw)
    if expires <= now:
        raise ValidationException("ExpirationDate must be in the future")
    if expires > now + MAX_ACTIVATION_LIFETIME + dt.timedelta(seconds=5):
        raise ValidationException("ExpirationDate cannot be more than 30 days in the future")
    description = self._get_param("Description")
    default_name = self._get_param("DefaultInstanceName")
    if description is not None and len(str(description)) > 256:
        raise ValidationException(constraint("description", description, "Member must have length less than or equal to 256"))
    if default_name is not None and (len(str(default_name)) > 256 or not tag_text_ok(str(default_name))):
        raise ValidationException(
            constraint("defaultInstanceName", default_name, f"Member must satisfy regular expression pattern: {TAG_PATTERN}")
        )
    tags = self._get_param("Tags", []) or []
    validate_tags(tags)
    activation = Activation(self.current_account, role, limit, expires, description, default_name, tags)
    activations(self.ssm_backend)[activation.activation_id] = activation
    return ActionResult({"ActivationId": activation.activation_id, "ActivationCode": activation.code})


FILTER_KEYS = ("ActivationIds", "DefaultInstanceName", "IamRole")


def _check_filters(filters: Iterable[dict[str, Any]]) -> None:
    """A key outside the enum is refused whether or not any activation exists."""
    for f in filters:
        if f.get("FilterKey") not in FILTER_KEYS:
            raise InvalidFilter(f"Invalid filter key {f.get('FilterKey')}")


def _matches(activation: Activation, filters: Iterable[dict[str, Any]]) -> bool:
    for f in filters:
        key, values = f.get("FilterKey"), f.get("FilterValues") or []
        field = {
            "ActivationIds": activation.activation_id,
            "DefaultInstanceName": activation.default_instance_name,
            "IamRole": activation.iam_role,
        }.get(key)
        if values and field not in values:
            return False
    return True


def describe_activations(self: SimpleSystemManagerResponse) -> ActionResult:
    filters = self._get_param("Filters", []) or []
    max_results = self._get_param("MaxResults", 50) or 50
    token = self._get_param("NextToken")
    if not 1 <= max_results <= 50:
        raise ValidationException("MaxResults must be between 1 and 50")
    _check_filters(filters)
    found = [a for a in activations(self.ssm_backend).values() if _matches(a, filters)]
    found.sort(key=lambda a: (a.created, a.activation_id))
    if token:
        after = decode_cursor(token)
        if not (isinstance(after, list) and len(after) == 2):
            raise InvalidNextToken()
        found = [a for a in found if [a.created.timestamp(), a.activation_id] > after]
    taken = found[:max_results]
    out: dict[str, Any] = {"ActivationList": [a.describe() for a in taken]}
    if len(found) > max_results:
        out["NextToken"] = encode_cursor([taken[-1].created.timestamp(), taken[-1].activation_id])
    return ActionResult(out)


def delete_activation(self: SimpleSystemManagerResponse) -> ActionResult:
    activation_id = self._get_param("ActivationId")
    try:
        uuid.UUID(str(activation_id))
    except ValueError:
        raise InvalidActivationId(f"{activation_id} is not a valid activation ID")
    if activations(self.ssm_backend).pop(activation_id, None) is None:
        raise InvalidActivation(f"Activation ID {activation_id} does not exist")
    deleted_activations(self.ssm_backend).add(activation_id)
    return EmptyResult()
