"""AWS's request quotas, metered with token buckets: opt-in, off by default.

  EMULATOR_QUOTAS=aws-defaults          every bucket below at its figure, for the whole run
  GET/POST/DELETE /_emulator/quotas     the active buckets and what each throttled; set or
                                        clear buckets at run time (the body: README.md)

Each bucket holds at most `burst` tokens and gains `rate` a second with the real clock
(TokenBucket is pure: the time is passed in). A call takes its cost from its bucket when
it is applied, under the AWS lock (app.py); when the bucket holds less than the cost,
the call is not applied and answers what AWS answers for that operation over quota
(botocore's service models and AWS's documentation, docs/DESIGN.md section 14):

  SSM    ThrottlingException, 400, "Rate exceeded" (the JSON 1.1 error SSM answers for
         every API's request rate; no SSM operation here declares a throttling error)
  KMS    ThrottlingException, 400, "You have exceeded the rate at which you may call KMS.
         Reduce the frequency of your calls."
  DynamoDB, per partition key (on-demand tables throttle a hot key, not the table):
         GetItem, PutItem, UpdateItem, DeleteItem: ProvisionedThroughputExceededException,
           400, with ThrottlingReasons [{"reason": "Table{Read,Write}KeyRangeThroughputExceeded",
           "resource": the table's ARN}]
         TransactWriteItems: TransactionCanceledException, 400, CancellationReasons
           "ThrottlingError" for each item whose key is over quota, "None" for the others;
           nothing is applied
         BatchGetItem: the keys over quota come back in UnprocessedKeys and the others are
           read; when none can be read, ProvisionedThroughputExceededException

DynamoDB costs units as DynamoDB counts them: a write 1 unit per KB (rounded up) of the
larger of the item before and after (an UpdateItem's after-image is taken as the item
plus the request's values), a strongly consistent read 1 unit per 4 KB (an eventually
consistent one half that), a transaction's items twice (a ConditionCheck as a write). A
call whose cost exceeds `burst` passes when the bucket is full, leaving it in debt.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from .wire import aws_error

AWS_DEFAULTS = "aws-defaults"
ACCOUNT = "123456789012"  # moto's one account
SSM_MESSAGE = "Rate exceeded"
KMS_MESSAGE = "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."


class TokenBucket:
    """At most `burst` tokens, `rate` more a second; the caller passes the time in."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (0 < rate < math.inf and 0 < burst < math.inf):
            raise ValueError("rate and burst must be numbers above 0")
        self.rate, self.burst = float(rate), float(burst)
        self.tokens = self.burst
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def can_take(self, cost: float, now: float) -> bool:
        """Whether `cost` fits now: the bucket holds it, or is full (a cost above the burst
        passes once the bucket has filled, and leaves it in debt)."""
        self.refill(now)
        return self.tokens >= min(cost, self.burst)

    def take(self, cost: float, now: float) -> bool:
        if not self.can_take(cost, now):
            return False
        self.tokens -= cost
        return True

    def is_full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.burst


@dataclass(frozen=True)
class Kind:
    """One quota AWS meters: which calls draw on it, at what figure, over what scope."""

    name: str
    operations: tuple[str, ...]
    rate: float  # the figure modelled, per second (burst: the same, one second's worth)
    per_key: bool  # DynamoDB: a bucket per table and partition key; else per account and Region
    unit: str  # "request", "write unit" or "read unit"
    source: str


KMS_SYMMETRIC = tuple(
    f"KMS.{op}"
    for op in (
        "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "GenerateMac",
        "GenerateRandom", "ReEncrypt", "VerifyMac",
    )
)
DYNAMODB_WRITES = ("DynamoDB.PutItem", "DynamoDB.UpdateItem", "DynamoDB.DeleteItem", "DynamoDB.TransactWriteItems")
DYNAMODB_READS = ("DynamoDB.GetItem", "DynamoDB.BatchGetItem")

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("ssm-parameter-reads", ("SSM.GetParameter", "SSM.GetParameters", "SSM.GetParametersByPath"), 40, False,
             "request", "Systems Manager quotas: Parameter Store default throughput, shared (not the higher-throughput setting)"),
        Kind("ssm-put-parameter", ("SSM.PutParameter",), 10, False, "request", "chosen: AWS publishes no figure (docs/DESIGN.md section 14)"),
        Kind("ssm-create-activation", ("SSM.CreateActivation",), 10, False, "request", "chosen: AWS publishes no figure"),
        Kind("ssm-describe-activations", ("SSM.DescribeActivations",), 10, False, "request", "chosen: AWS publishes no figure"),
        Kind("kms-symmetric-cryptographic", KMS_SYMMETRIC, 5500, False, "request",
             "KMS request quotas: cryptographic operations (symmetric), shared; the lowest Regional default"),
        Kind("dynamodb-partition-writes", DYNAMODB_WRITES, 1000, True, "write unit",
             "DynamoDB partition key design: 1,000 write units a second per partition"),
        Kind("dynamodb-partition-reads", DYNAMODB_READS, 3000, True, "read unit",
             "DynamoDB partition key design: 3,000 read units a second per partition"),
    )
}
KIND_OF: dict[str, Kind] = {op: kind for kind in KINDS.values() for op in kind.operations}


@dataclass
class Quota:
    """An active bucket setting: its buckets (one, or one per partition key) and counts."""

    kind: Kind
    rate: float
    burst: float
    buckets: dict[Any, TokenBucket] = field(default_factory=dict)
    throttled: Counter[str] = field(default_factory=Counter)
    prune_at: int = 50_000  # DynamoDB's buckets kept before the full ones are dropped

    def bucket(self, scope: Any, now: float) -> TokenBucket:
        found = self.buckets.get(scope)
        if found is None:
            if len(self.buckets) >= self.prune_at:  # a key that has refilled is as good as new
                self.buckets = {s: b for s, b in self.buckets.items() if not b.is_full(now)}
                self.prune_at = max(50_000, 2 * len(self.buckets))
            found = self.buckets[scope] = TokenBucket(self.rate, self.burst, now)
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "operations": list(self.kind.operations),
            "rate": self.rate,
            "burst": self.burst,
            "per": "partition key" if self.kind.per_key else "account and Region",
            "unit": self.kind.unit,
            "source": self.kind.source,
            "throttled": sum(self.throttled.values()),
            "throttled_by_operation": dict(self.throttled),
        }


# --------------------------------------------------------------------------- DynamoDB's units


@dataclass(frozen=True)
class Charge:
    """What one item of a DynamoDB call costs: `units` from the bucket of `partition`."""

    table: str
    partition: Any  # (table, partition key value), or None for a table moto does not have
    units: float


# (table name, key or item attributes) -> (the partition, the stored item's size in bytes)
ItemLookup = Callable[[str, dict[str, Any]], "tuple[Any, int]"]


def attributes_size(attrs: dict[str, Any] | None) -> int:
    """DynamoDB's size of attribute values as the wire carries them: names plus values."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    return sum(len(k.encode()) + DynamoType(v).size() for k, v in (attrs or {}).items())


def write_units(size: int, transactional: bool = False) -> float:
    return max(1, math.ceil(size / 1024)) * (2 if transactional else 1)


def read_units(size: int, consistent: bool, transactional: bool = False) -> float:
    units = float(max(1, math.ceil(size / 4096)))
    if transactional:
        return units * 2
    return units if consistent else units / 2


def write_charge(table: str, action: str, spec: dict[str, Any], lookup: ItemLookup, transactional: bool) -> Charge:
    """One write (Put, Update, Delete or a transaction's ConditionCheck) of one item."""
    if action == "Put":
        partition, old = lookup(table, spec.get("Item") or {})
        size = max(old, attributes_size(spec.get("Item")))
    else:
        partition, old = lookup(table, spec.get("Key") or {})
        size = old + attributes_size(spec.get("ExpressionAttributeValues")) if action == "Update" else old
    return Charge(table, partition, write_units(size, transactional))


def dynamodb_charges(operation: str, request: dict[str, Any], lookup: ItemLookup) -> list[Charge]:
    """What each item of a metered DynamoDB call costs, in the request's order."""
    action = operation.split(".", 1)[1]
    if action in ("PutItem", "UpdateItem", "DeleteItem"):
        return [write_charge(request.get("TableName", ""), action[: -len("Item")], request, lookup, False)]
    if action == "TransactWriteItems":
        charges = []
        for item in request.get("TransactItems") or []:
            kind, spec = next(iter(item.items())) if isinstance(item, dict) and item else ("", {})
            verb = {"Put": "Put", "Update": "Update", "Delete": "Delete"}.get(kind, "ConditionCheck")
            charges.append(write_charge(spec.get("TableName", ""), verb, spec, lookup, True))
        return charges
    if action == "GetItem":
        partition, size = lookup(request.get("TableName", ""), request.get("Key") or {})
        return [Charge(request.get("TableName", ""), partition, read_units(size, bool(request.get("ConsistentRead"))))]
    if action == "BatchGetItem":
        charges = []
        for table, spec in (request.get("RequestItems") or {}).items():
            for key in spec.get("Keys") or []:
                partition, size = lookup(table, key)
                charges.append(Charge(table, partition, read_units(size, bool(spec.get("ConsistentRead")))))
        return charges
    return []


def moto_item_lookup(region: str) -> ItemLookup:
    """The partition and stored size of an item in moto's tables (the caller holds the AWS lock)."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import DynamoType

    backend = dynamodb_backends[ACCOUNT][region]

    def lookup(table_name: str, attrs: dict[str, Any]) -> tuple[Any, int]:
        table = backend.tables.get(table_name)
        if table is None or table.hash_key_attr not in attrs:
            return None, 0
        hash_value = attrs[table.hash_key_attr]
        partition = (table.name, json.dumps(hash_value, sort_keys=True))
        stored = table.items.get(DynamoType(hash_value))
        if stored is not None and table.has_range_key:
            range_value = attrs.get(table.range_key_attr)
            stored = stored.get(DynamoType(range_value)) if range_value is not None else None
        return partition, stored.size() if stored is not None else 0

    return lookup


# --------------------------------------------------------------------------- verdicts


@dataclass
class Refusal:
    """The error a throttled call answers (what wire.aws_error takes of a fault)."""

    status: int
    code: str
    message: str | None = None
    reasons: list[Any] | None = None
    fields: dict[str, Any] | None = None

    def answer(self, start_response: Any, operation: str, environ: dict[str, Any], body: bytes) -> list[bytes]:
        return aws_error(start_response, self.status, self.code, operation, environ, body, self)


@dataclass
class Verdict:
    """What the quotas do to one call: refuse it, or let it through (a BatchGetItem
    with some keys left unread: `body` is the request without them, `unprocessed` them)."""

    refusal: Refusal | None = None
    body: bytes | None = None
    unprocessed: dict[str, Any] | None = None


PASS = Verdict()


def key_range_refusal(region: str, table: str, reads: bool) -> Refusal:
    return Refusal(
        400,
        "ProvisionedThroughputExceededException",
        fields={
            "ThrottlingReasons": [
                {
                    "reason": f"Table{'Read' if reads else 'Write'}KeyRangeThroughputExceeded",
                    "resource": f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{table}",
                }
            ]
        },
    )


class Quotas:
    """The active buckets, guarded by a lock of their own."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.quotas: dict[str, Quota] = {}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Quotas":
        """EMULATOR_QUOTAS: unset or empty, off; `aws-defaults`, every bucket at its figure."""
        value = (os.environ if environ is None else environ).get("EMULATOR_QUOTAS", "")
        quotas = cls()
        if value == AWS_DEFAULTS:
            quotas.configure({"*": {}})
        elif value:
            raise ValueError(f'EMULATOR_QUOTAS must be "{AWS_DEFAULTS}" or unset, not {value!r}')
        return quotas

    @property
    def active(self) -> bool:
        return bool(self.quotas)

    def configure(self, spec: Any) -> None:
        """Sets ({"rate", "burst"}, each optional) or clears (null) the named buckets; "*"
        names them all. All or none: a bad entry changes nothing."""
        if not isinstance(spec, dict):
            raise ValueError('quotas are {"bucket name" | "*": {"rate": R, "burst": B} | null, ...}')
        now = self.clock()
        changes: dict[str, Quota | None] = {}
        for name, setting in sorted(spec.items(), key=lambda item: item[0] != "*"):
            if name != "*" and name not in KINDS:
                raise ValueError(f"unknown quota {name!r}: one of {', '.join(KINDS)} or *")
            for kind in KINDS.values() if name == "*" else [KINDS[name]]:
                changes[kind.name] = None if setting is None else self._quota(kind, setting, now)
        with self.lock:
            for name, quota in changes.items():
                if quota is None:
                    self.quotas.pop(name, None)
                else:
                    self.quotas[name] = quota

    @staticmethod
    def _quota(kind: Kind, setting: Any, now: float) -> Quota:
        if not isinstance(setting, dict) or set(setting) - {"rate", "burst"}:
            raise ValueError(f'{kind.name}: a quota is {{"rate": R, "burst": B}} (each optional) or null')
        rate = float(setting.get("rate", kind.rate))
        burst = float(setting.get("burst", rate))
        TokenBucket(rate, burst, now)  # validates
        return Quota(kind, rate, burst)

    def admit(self, operation: str, environ: dict[str, Any], body: bytes) -> Verdict:
        """The quotas' verdict on one call (the caller holds the AWS lock: moto's items are read)."""
        kind = KIND_OF.get(operation)
        if kind is None or kind.name not in self.quotas:
            return PASS
        from .principals import region_of

        region = region_of(environ)
        if not kind.per_key:
            return self._admit_request(kind, operation, region)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return PASS  # moto answers the malformed request
        if not isinstance(request, dict):
            return PASS
        charges = dynamodb_charges(operation, request, moto_item_lookup(region))
        if operation == "DynamoDB.BatchGetItem":
            return self._admit_batch_get(kind, operation, region, request, charges)
        return self._admit_items(kind, operation, region, charges)

    def _admit_request(self, kind: Kind, operation: str, region: str) -> Verdict:
        with self.lock:
            quota = self.quotas.get(kind.name)
            now = self.clock()
            if quota is None or quota.bucket(region, now).take(1, now):
                return PASS
            quota.throttled[operation] += 1
        return Verdict(Refusal(400, "ThrottlingException", SSM_MESSAGE if operation.startswith("SSM.") else KMS_MESSAGE))

    def _admit_items(self, kind: Kind, operation: str, region: str, charges: list[Charge]) -> Verdict:
        """All the items' units, or none (a transaction is all or nothing)."""
        needed: Counter[Any] = Counter()
        for charge in charges:
            if charge.partition is not None:
                needed[charge.partition] += charge.units
        with self.lock:
            quota = self.quotas.get(kind.name)
            if quota is None:
                return PASS
            now = self.clock()
            short = {p for p, units in needed.items() if not quota.bucket(p, now).can_take(units, now)}
            if not short:
                for partition, units in needed.items():
                    quota.bucket(partition, now).take(units, now)
                return PASS
            quota.throttled[operation] += 1
        if operation == "DynamoDB.TransactWriteItems":
            reasons = ["ThrottlingError" if c.partition in short else "None" for c in charges]
            return Verdict(Refusal(400, "TransactionCanceledException", reasons=reasons))
        table = next(c.table for c in charges if c.partition in short)
        return Verdict(key_range_refusal(region, table, reads=operation == "DynamoDB.GetItem"))

    def _admit_batch_get(
        self, kind: Kind, operation: str, region: str, request: dict[str, Any], charges: list[Charge]
    ) -> Verdict:
        """Each key on its own: the ones over quota are left unread, in UnprocessedKeys."""
        left: list[bool] = []
        with self.lock:
            quota = self.quotas.get(kind.name)
            if quota is None:
                return PASS
            now = self.clock()
            for charge in charges:
                left.append(charge.partition is not None and not quota.bucket(charge.partition, now).take(charge.units, now))
            if not any(left):
                return PASS
            quota.throttled[operation] += 1
        if all(left):
            return Verdict(key_range_refusal(region, charges[0].table, reads=True))
        read: dict[str, Any] = {}
        unprocessed: dict[str, Any] = {}
        flags = iter(left)
        for table, spec in request["RequestItems"].items():
            keys = spec.get("Keys") or []
            skipped = [next(flags) for _ in keys]
            for target, wanted in ((read, False), (unprocessed, True)):
                chosen = [k for k, s in zip(keys, skipped) if s == wanted]
                if chosen:
                    target[table] = {**spec, "Keys": chosen}
        rewritten = json.dumps({**request, "RequestItems": read}).encode()
        return Verdict(body=rewritten, unprocessed=unprocessed)

    def finish(
        self, verdict: Verdict, status: str, headers: list[tuple[str, str]], chunks: list[bytes]
    ) -> tuple[list[tuple[str, str]], list[bytes]]:
        """A BatchGetItem's answer with the keys left unread added to its UnprocessedKeys."""
        if not verdict.unprocessed or not status.startswith("2"):
            return headers, chunks
        answer = json.loads(b"".join(chunks) or b"{}")
        merged = answer.get("UnprocessedKeys") or {}
        for table, spec in verdict.unprocessed.items():
            if table in merged:
                merged[table]["Keys"] = merged[table].get("Keys", []) + spec["Keys"]
            else:
                merged[table] = spec
        answer["UnprocessedKeys"] = merged
        body = json.dumps(answer, separators=(",", ":")).encode()
        replaced = {"content-length": str(len(body)), "x-amz-crc32": str(zlib.crc32(body) & 0xFFFFFFFF)}
        kept = [(k, v) for k, v in headers if k.lower() not in replaced]
        return kept + [(k.title() if k == "content-length" else k, v) for k, v in replaced.items()], [body]

    def route(self, method: str, path: str, raw: bytes) -> tuple[int, Any] | None:
        """The answer to /_emulator/quotas; None for anything else."""
        if path != "/_emulator/quotas":
            return None
        if method == "POST":
            self.configure(json.loads(raw or b"{}"))
        elif method == "DELETE":
            with self.lock:
                self.quotas.clear()
        elif method != "GET":
            return 405, {"error": "MethodNotAllowed", "message": f"{method} {path}"}
        with self.lock:
            return 200, {name: quota.as_json() for name, quota in self.quotas.items()}


def apply_body(environ: dict[str, Any], body: bytes) -> None:
    """Hands moto `body` instead of the request's own (a BatchGetItem without its unread keys)."""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["emulator.body"] = body
