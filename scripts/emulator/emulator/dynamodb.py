"""DynamoDB TransactWriteItems as DynamoDB does it, where moto differs.

  * ClientRequestToken idempotency (moto ignores the token): a token seen in the last 10
    minutes with the same request parameters returns success without applying the writes
    again if that request succeeded (and runs again if it was cancelled); with other
    parameters it is IdempotentParameterMismatchException.
  * The cost of a commit: moto copies every table a transaction names, whole, so that it
    can roll back, a cost that grows with the table (tens of milliseconds per commit once
    the table holds thousands of records, hundreds at worst) and that AWS does not have.
    Here the copy is of the items the transaction touches, restored on any failure;
    moto's own table copy becomes the table itself for the length of the call.

ReturnValuesOnConditionCheckFailure=ALL_OLD (the old Item in ConditionalCheckFailedException
and in a transaction's CancellationReasons) is moto's own.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any, Callable

from moto.core.responses import ActionResult
from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException, TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler

IDEMPOTENCY_WINDOW_SECONDS = 600.0  # DynamoDB keeps a ClientRequestToken for 10 minutes


# --------------------------------------------------------------------------- ClientRequestToken


class IdempotentParameterMismatch(DynamodbException):
    def __init__(self) -> None:
        super().__init__(
            ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
            "The request uses the same client token as a previous, but non-identical request.",
        )


class _TokenRecord:
    def __init__(self, fingerprint: str, completed: float, succeeded: bool) -> None:
        self.fingerprint = fingerprint
        self.completed = completed
        self.succeeded = succeeded


def _client_tokens(backend: Any) -> dict[str, _TokenRecord]:
    if not hasattr(backend, "_vending_client_tokens"):
        backend._vending_client_tokens = {}
    return backend._vending_client_tokens  # type: ignore[no-any-return]


def idempotent_transact_write_items(moto_transact_write_items: Callable[..., Any]) -> Callable[..., Any]:
    """moto's TransactWriteItems handler, behind the token's check."""

    def transact_write_items(self: DynamoHandler) -> ActionResult:
        """TransactWriteItems with DynamoDB's ClientRequestToken semantics (moto has none).

        The token is valid for 10 minutes after the first request that used it completed.
        A repeat with the same parameters is a success without side effects if that request
        succeeded; a cancelled one runs again. Other parameters: IdempotentParameterMismatch.
        """
        token = self.body.get("ClientRequestToken")
        if not token:
            return moto_transact_write_items(self)  # type: ignore[no-any-return]
        params = {k: v for k, v in self.body.items() if k != "ClientRequestToken"}
        fingerprint = json.dumps(params, sort_keys=True, default=repr)
        tokens = _client_tokens(self.dynamodb_backend)
        now = time.monotonic()
        for stale in [t for t, r in tokens.items() if now - r.completed > IDEMPOTENCY_WINDOW_SECONDS]:
            del tokens[stale]
        seen = tokens.get(token)
        if seen is not None and seen.fingerprint != fingerprint:
            raise IdempotentParameterMismatch()
        if seen is not None and seen.succeeded:
            return ActionResult({})
        try:
            result = moto_transact_write_items(self)
        except TransactionCanceledException:
            if seen is None:
                tokens[token] = _TokenRecord(fingerprint, now, succeeded=False)
            raise
        if seen is None:
            tokens[token] = _TokenRecord(fingerprint, now, succeeded=True)
        else:
            seen.succeeded = True
        return result  # type: ignore[no-any-return]

    return transact_write_items


# --------------------------------------------------------------------------- the cost of a commit


_table_copies_are_shallow = threading.local()


def table_deepcopy(self: Table, memo: dict[int, Any]) -> Any:
    """A table's deep copy: the table itself while a transaction runs (see below), a real
    copy otherwise (moto's Table has no __deepcopy__ of its own: patches.py checks)."""
    if getattr(_table_copies_are_shallow, "on", False):
        return self
    clone = Table.__new__(Table)
    memo[id(self)] = clone
    for name, value in self.__dict__.items():
        setattr(clone, name, copy.deepcopy(value, memo))
    return clone


def _touched_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
    """(table, hash key, range key, a copy of the item or None) for each item named."""
    touched = []
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        table = backend.tables.get(op.get("TableName"))
        if table is None:
            continue
        attrs = op.get("Key") or op.get("Item") or {}
        if table.hash_key_attr not in attrs:
            continue
        hash_key = DynamoType(attrs[table.hash_key_attr])
        range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr in attrs else None
        touched.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
    return touched


def restoring_touched_items(moto_backend_transact_write_items: Callable[..., Any]) -> Callable[..., Any]:
    """moto's transaction, with the touched items copied first and put back on a failure
    (its table copies shallow meanwhile)."""

    def _transact_write_items_restoring_touched_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        touched = _touched_items(self, transact_items)
        _table_copies_are_shallow.on = True
        try:
            moto_backend_transact_write_items(self, transact_items)
        except BaseException:
            for table, hash_key, range_key, item in reversed(touched):
                if item is None:
                    table.delete_item(hash_key, range_key)
                elif range_key is not None:
                    table.items[hash_key][range_key] = item
                else:
                    table.items[hash_key] = item
            raise
        finally:
            _table_copies_are_shallow.on = False

    return _transact_write_items_restoring_touched_items
