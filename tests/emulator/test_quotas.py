"""AWS's request quotas in the emulator (scripts/emulator/emulator/quotas.py).

The token bucket and DynamoDB's units are pure: tested with the time passed in and a
stand-in for moto's items. Over the wire, one emulator started with
EMULATOR_QUOTAS=aws-defaults; each test sets the bucket it looks at to a burst of a few
tokens that refill too slowly to matter (POST /_emulator/quotas), so that "within the
burst passes, one more is throttled" holds without sleeping; after each test every
bucket is back at AWS's figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_emulator import (  # the emulator suite's helpers: one way to start and call it
    REGION,
    ROLE,
    SERVER,
    TABLE,
    client,
    control,
    control_status,
    free_port,
    new_key,
    raw_call,
    running_emulator,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "emulator"))
from emulator.quotas import KINDS, Charge, Quotas, TokenBucket, dynamodb_charges  # noqa: E402

SLOW = 0.001  # tokens a second: nothing refills within a test


# --------------------------------------------------------------------------- the bucket (pure)


def test_a_bucket_at_its_rate_never_throttles() -> None:
    bucket = TokenBucket(rate=40, burst=40, now=0.0)
    assert all(bucket.take(1, now=i / 40) for i in range(40 * 60))


def test_a_bucket_over_its_rate_throttles_once_its_burst_is_spent() -> None:
    bucket = TokenBucket(rate=40, burst=40, now=0.0)
    assert all(bucket.take(1, now=0.0) for _ in range(40))
    assert not bucket.take(1, now=0.0)
    assert not bucket.take(1, now=0.02)  # 0.8 of a token back
    assert bucket.take(1, now=0.025)
    # 41 a second, sustained: the 41st of some second is throttled.
    steady = TokenBucket(rate=40, burst=40, now=0.0)
    assert not all(steady.take(1, now=i / 41) for i in range(41 * 60))


def test_a_bucket_refills_no_higher_than_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(1, now=100.0) for _ in range(6)] == [True] * 5 + [False]


def test_a_cost_above_the_burst_passes_on_a_full_bucket_and_leaves_it_in_debt() -> None:
    bucket = TokenBucket(rate=1, burst=2, now=0.0)
    assert bucket.take(3, now=0.0)
    assert not bucket.take(1, now=1.5)  # -1 + 1.5 = 0.5
    assert bucket.take(1, now=2.0)


def test_a_bucket_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=-1, now=0.0)


def test_quotas_are_off_unless_emulator_quotas_says_aws_defaults() -> None:
    assert not Quotas.from_env({}).active
    assert not Quotas.from_env({"EMULATOR_QUOTAS": ""}).active
    on = Quotas.from_env({"EMULATOR_QUOTAS": "aws-defaults"})
    assert set(on.quotas) == set(KINDS)
    with pytest.raises(ValueError, match="EMULATOR_QUOTAS"):
        Quotas.from_env({"EMULATOR_QUOTAS": "on"})


# --------------------------------------------------------------------------- DynamoDB's units (pure)


def stored(sizes: dict[str, int]) -> Any:
    """A stand-in for moto's items: partition = the pk's string, size as given (0: absent)."""

    def lookup(table: str, attrs: dict[str, Any]) -> tuple[Any, int]:
        pk = attrs["pk"]["S"]
        return (table, pk), sizes.get(pk, 0)

    return lookup


def units(charges: list[Charge]) -> list[float]:
    return [c.units for c in charges]


def test_a_write_costs_a_unit_per_kb_of_the_larger_of_the_item_before_and_after() -> None:
    big = {"pk": {"S": "a"}, "blob": {"S": "x" * 2500}}
    assert units(dynamodb_charges("DynamoDB.PutItem", {"TableName": "t", "Item": big}, stored({}))) == [3]
    small = {"pk": {"S": "a"}, "n": {"N": "1"}}
    assert units(dynamodb_charges("DynamoDB.PutItem", {"TableName": "t", "Item": small}, stored({"a": 4000}))) == [4]
    assert units(dynamodb_charges("DynamoDB.DeleteItem", {"TableName": "t", "Key": {"pk": {"S": "a"}}}, stored({"a": 1500}))) == [2]
    assert units(dynamodb_charges("DynamoDB.DeleteItem", {"TableName": "t", "Key": {"pk": {"S": "a"}}}, stored({}))) == [1]
    update = {"TableName": "t", "Key": {"pk": {"S": "a"}}, "ExpressionAttributeValues": {":v": {"S": "y" * 600}}}
    assert units(dynamodb_charges("DynamoDB.UpdateItem", update, stored({"a": 500}))) == [2]


def test_a_read_costs_a_unit_per_4_kb_and_half_that_eventually_consistent() -> None:
    key = {"pk": {"S": "a"}}
    assert units(dynamodb_charges("DynamoDB.GetItem", {"TableName": "t", "Key": key, "ConsistentRead": True}, stored({"a": 9000}))) == [3]
    assert units(dynamodb_charges("DynamoDB.GetItem", {"TableName": "t", "Key": key}, stored({"a": 9000}))) == [1.5]
    assert units(dynamodb_charges("DynamoDB.GetItem", {"TableName": "t", "Key": key, "ConsistentRead": True}, stored({}))) == [1]


def test_a_transaction_costs_each_item_twice_on_its_own_key() -> None:
    request = {
        "TransactItems": [
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "a"}}, "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "b"}}}},
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "c"}, "blob": {"S": "x" * 1500}}}},
        ]
    }
    charges = dynamodb_charges("DynamoDB.TransactWriteItems", request, stored({"a": 100, "b": 100}))
    assert units(charges) == [2, 2, 4]
    assert [c.partition for c in charges] == [("t", "a"), ("t", "b"), ("t", "c")]


def test_a_batch_get_charges_each_key() -> None:
    request = {"RequestItems": {"t": {"Keys": [{"pk": {"S": "a"}}, {"pk": {"S": "b"}}], "ConsistentRead": True}}}
    charges = dynamodb_charges("DynamoDB.BatchGetItem", request, stored({"a": 5000}))
    assert units(charges) == [2, 1]
    assert [c.partition for c in charges] == [("t", "a"), ("t", "b")]


# --------------------------------------------------------------------------- over the wire


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with running_emulator("emulator-quotas-", EMULATOR_QUOTAS="aws-defaults") as url:
        yield url


@pytest.fixture(autouse=True)
def aws_defaults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every bucket back at AWS's figures, full, after a test that went over the wire."""
    yield
    if "emulator" in request.fixturenames:
        control(request.getfixturevalue("emulator"), "POST", "/_emulator/quotas", {"*": {}})


def set_quota(url: str, name: str, burst: float, rate: float = SLOW) -> None:
    control(url, "POST", "/_emulator/quotas", {name: {"rate": rate, "burst": burst}})


def error_of(call: Any) -> tuple[str, int, dict[str, Any]]:
    """The code, HTTP status and parsed answer of a call that must fail."""
    with pytest.raises(Exception) as err:
        call()
    response = err.value.response  # type: ignore[attr-defined]
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response


def put_parameter(ssm: Any, name: str) -> None:
    ssm.put_parameter(Name=name, Value="v", Type="String", Overwrite=True)


def test_aws_defaults_turns_every_bucket_on_at_aws_figures(emulator: str) -> None:
    shown = control(emulator, "GET", "/_emulator/quotas")
    assert {name: q["rate"] for name, q in shown.items()} == {
        "ssm-parameter-reads": 40,
        "ssm-put-parameter": 10,
        "ssm-create-activation": 10,
        "ssm-describe-activations": 10,
        "kms-symmetric-cryptographic": 5500,
        "dynamodb-partition-writes": 1000,
        "dynamodb-partition-reads": 3000,
    }
    assert all(q["burst"] == q["rate"] and q["throttled"] == 0 for q in shown.values())
    assert shown["ssm-parameter-reads"]["operations"] == ["SSM.GetParameter", "SSM.GetParameters", "SSM.GetParametersByPath"]
    assert shown["dynamodb-partition-writes"]["per"] == "partition key"


def test_parameter_reads_under_the_quota_are_never_throttled(emulator: str) -> None:
    ssm = client(emulator, "ssm")
    put_parameter(ssm, "/quotas/under/a")
    for _ in range(30):  # the default 40 a second, well under it
        ssm.get_parameter(Name="/quotas/under/a")
    assert control(emulator, "GET", "/_emulator/quotas")["ssm-parameter-reads"]["throttled"] == 0


def test_parameter_reads_share_one_bucket_and_over_it_answer_ssms_throttling_exception(emulator: str) -> None:
    ssm = client(emulator, "ssm")
    put_parameter(ssm, "/quotas/shared/a")
    set_quota(emulator, "ssm-parameter-reads", burst=3)
    ssm.get_parameter(Name="/quotas/shared/a")
    ssm.get_parameters_by_path(Path="/quotas/shared")
    ssm.get_parameters(Names=["/quotas/shared/a"])
    code, status, response = error_of(lambda: ssm.get_parameter(Name="/quotas/shared/a"))
    assert (code, status, response["Error"]["Message"]) == ("ThrottlingException", 400, "Rate exceeded")
    status, headers, body = raw_call(
        emulator, "AmazonSSM.GetParametersByPath", {"Path": "/quotas/shared"}, "application/x-amz-json-1.1"
    )
    assert status == 400
    assert headers["content-type"] == "application/x-amz-json-1.1"
    assert headers["x-amzn-errortype"] == "ThrottlingException"
    assert json.loads(body) == {"__type": "ThrottlingException", "message": "Rate exceeded"}
    shown = control(emulator, "GET", "/_emulator/quotas")["ssm-parameter-reads"]
    assert shown["throttled"] == 2
    assert shown["throttled_by_operation"] == {"SSM.GetParameter": 1, "SSM.GetParametersByPath": 1}
    put_parameter(ssm, "/quotas/shared/b")  # writes draw on a bucket of their own


@pytest.mark.parametrize(
    "bucket, call",
    [
        ("ssm-put-parameter", lambda ssm: put_parameter(ssm, "/quotas/put")),
        ("ssm-create-activation", lambda ssm: ssm.create_activation(IamRole=ROLE)),
        ("ssm-describe-activations", lambda ssm: ssm.describe_activations()),
    ],
)
def test_ssm_calls_without_a_published_figure_are_metered_at_the_chosen_one(emulator: str, bucket: str, call: Any) -> None:
    ssm = client(emulator, "ssm")
    set_quota(emulator, bucket, burst=2)
    call(ssm)
    call(ssm)
    code, status, _ = error_of(lambda: call(ssm))
    assert (code, status) == ("ThrottlingException", 400)
    assert control(emulator, "GET", "/_emulator/quotas")[bucket]["throttled"] == 1


def test_kms_cryptographic_operations_share_one_bucket_and_over_it_answer_kms_throttling(emulator: str) -> None:
    kms = client(emulator, "kms")
    set_quota(emulator, "kms-symmetric-cryptographic", burst=2)
    blob = kms.encrypt(KeyId="alias/activation-vending", Plaintext=b"x")["CiphertextBlob"]
    kms.decrypt(CiphertextBlob=blob)
    kms.describe_key(KeyId="alias/activation-vending")  # not a cryptographic operation
    code, status, response = error_of(lambda: kms.generate_data_key(KeyId="alias/activation-vending", KeySpec="AES_256"))
    assert (code, status) == ("ThrottlingException", 400)
    assert response["Error"]["Message"] == (
        "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."
    )


def test_dynamodb_writes_are_metered_per_partition_key_and_a_throttled_write_is_not_applied(emulator: str) -> None:
    ddb = client(emulator)
    hot, cold = new_key(), new_key()
    set_quota(emulator, "dynamodb-partition-writes", burst=3)
    ddb.put_item(TableName=TABLE, Item={**hot, "v": {"N": "1"}})
    ddb.update_item(TableName=TABLE, Key=hot, UpdateExpression="SET v = :v", ExpressionAttributeValues={":v": {"N": "2"}})
    ddb.put_item(TableName=TABLE, Item={**hot, "v": {"N": "3"}})
    code, status, response = error_of(lambda: ddb.put_item(TableName=TABLE, Item={**hot, "v": {"N": "4"}}))
    assert (code, status) == ("ProvisionedThroughputExceededException", 400)
    assert response["ThrottlingReasons"] == [
        {"reason": "TableWriteKeyRangeThroughputExceeded", "resource": f"arn:aws:dynamodb:{REGION}:123456789012:table/{TABLE}"}
    ]
    ddb.put_item(TableName=TABLE, Item={**cold, "v": {"N": "1"}})  # another key: its own bucket
    control(emulator, "DELETE", "/_emulator/quotas")
    assert ddb.get_item(TableName=TABLE, Key=hot, ConsistentRead=True)["Item"]["v"] == {"N": "3"}


def test_dynamodb_throttling_answers_in_dynamodbs_protocol(emulator: str) -> None:
    key = new_key()
    set_quota(emulator, "dynamodb-partition-writes", burst=1)
    item = {"TableName": TABLE, "Item": {**key}}
    assert raw_call(emulator, "DynamoDB_20120810.PutItem", item, "application/x-amz-json-1.0")[0] == 200
    status, headers, body = raw_call(emulator, "DynamoDB_20120810.PutItem", item, "application/x-amz-json-1.0")
    assert status == 400
    assert headers["content-type"] == "application/x-amz-json-1.0"
    assert headers["x-amzn-errortype"] == "ProvisionedThroughputExceededException"
    assert "x-amz-crc32" in headers
    answer = json.loads(body)
    assert answer["__type"] == "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
    assert answer["message"].startswith("The level of configured provisioned throughput for the table was exceeded")


def test_a_write_of_a_larger_item_costs_more_units(emulator: str) -> None:
    ddb = client(emulator)
    key = new_key()
    set_quota(emulator, "dynamodb-partition-writes", burst=4)
    ddb.put_item(TableName=TABLE, Item={**key, "blob": {"S": "x" * 2500}})  # 3 units of 4
    code, _, _ = error_of(lambda: ddb.delete_item(TableName=TABLE, Key=key))  # 3 more
    assert code == "ProvisionedThroughputExceededException"


def test_a_transaction_costs_double_and_is_cancelled_whole_with_throttling_error_for_the_hot_item(emulator: str) -> None:
    ddb = client(emulator)
    hot, other, untouched = new_key(), new_key(), new_key()
    set_quota(emulator, "dynamodb-partition-writes", burst=3)

    def add(key: dict[str, Any]) -> dict[str, Any]:
        return {"Update": {"TableName": TABLE, "Key": key, "UpdateExpression": "ADD n :one",
                           "ExpressionAttributeValues": {":one": {"N": "1"}}}}

    ddb.transact_write_items(TransactItems=[add(hot), add(other)])  # 2 units each: 1 left on each key
    code, status, response = error_of(lambda: ddb.transact_write_items(TransactItems=[add(untouched), add(hot)]))
    assert (code, status) == ("TransactionCanceledException", 400)
    assert [r["Code"] for r in response["CancellationReasons"]] == ["None", "ThrottlingError"]
    code, _, _ = error_of(lambda: ddb.update_item(TableName=TABLE, Key=other, UpdateExpression="SET v = :v",
                                                  ExpressionAttributeValues={":v": {"S": "x" * 1100}}))
    assert code == "ProvisionedThroughputExceededException"  # 2 units, 1 left
    control(emulator, "DELETE", "/_emulator/quotas")
    assert "Item" not in ddb.get_item(TableName=TABLE, Key=untouched, ConsistentRead=True), "nothing applied"


def test_dynamodb_reads_are_metered_per_key_and_eventually_consistent_ones_cost_half(emulator: str) -> None:
    ddb = client(emulator)
    hot, cold = new_key(), new_key()
    set_quota(emulator, "dynamodb-partition-reads", burst=2)
    ddb.get_item(TableName=TABLE, Key=hot, ConsistentRead=True)
    ddb.get_item(TableName=TABLE, Key=hot)
    ddb.get_item(TableName=TABLE, Key=hot)
    code, status, response = error_of(lambda: ddb.get_item(TableName=TABLE, Key=hot))
    assert (code, status) == ("ProvisionedThroughputExceededException", 400)
    assert response["ThrottlingReasons"][0]["reason"] == "TableReadKeyRangeThroughputExceeded"
    ddb.get_item(TableName=TABLE, Key=cold, ConsistentRead=True)


def test_a_batch_get_leaves_the_keys_over_quota_unprocessed_and_reads_the_rest(emulator: str) -> None:
    ddb = client(emulator)
    hot, cold = new_key(), new_key()
    ddb.put_item(TableName=TABLE, Item={**hot, "v": {"N": "1"}})
    ddb.put_item(TableName=TABLE, Item={**cold, "v": {"N": "2"}})
    set_quota(emulator, "dynamodb-partition-reads", burst=1)
    ddb.get_item(TableName=TABLE, Key=hot, ConsistentRead=True)
    out = ddb.batch_get_item(RequestItems={TABLE: {"Keys": [hot, cold], "ConsistentRead": True}})
    assert [i["pk"] for i in out["Responses"][TABLE]] == [cold["pk"]]
    assert out["UnprocessedKeys"] == {TABLE: {"Keys": [hot], "ConsistentRead": True}}
    code, _, _ = error_of(lambda: ddb.batch_get_item(RequestItems={TABLE: {"Keys": [hot, cold], "ConsistentRead": True}}))
    assert code == "ProvisionedThroughputExceededException"  # none could be read
    assert control(emulator, "GET", "/_emulator/quotas")["dynamodb-partition-reads"]["throttled_by_operation"] == {
        "DynamoDB.BatchGetItem": 2
    }


def test_post_sets_and_clears_buckets_and_delete_turns_them_all_off(emulator: str) -> None:
    ssm = client(emulator, "ssm")
    put_parameter(ssm, "/quotas/control/a")
    set_quota(emulator, "ssm-parameter-reads", burst=1)
    ssm.get_parameter(Name="/quotas/control/a")
    assert error_of(lambda: ssm.get_parameter(Name="/quotas/control/a"))[0] == "ThrottlingException"
    shown = control(emulator, "POST", "/_emulator/quotas", {"ssm-parameter-reads": None})
    assert "ssm-parameter-reads" not in shown and "kms-symmetric-cryptographic" in shown
    for _ in range(3):
        ssm.get_parameter(Name="/quotas/control/a")
    assert control(emulator, "DELETE", "/_emulator/quotas") == {}
    assert control(emulator, "GET", "/_emulator/quotas") == {}
    shown = control(emulator, "POST", "/_emulator/quotas", {"ssm-parameter-reads": {"rate": 2}})
    assert shown == {"ssm-parameter-reads": {**shown["ssm-parameter-reads"], "rate": 2, "burst": 2, "throttled": 0}}


@pytest.mark.parametrize(
    "body",
    [
        {"ssm-parameter-reads": {"rate": 0}},
        {"ssm-parameter-reads": {"burst": -1}},
        {"ssm-parameter-reads": {"rate": 5, "per": "key"}},
        {"parameter-store": {}},
        {"ssm-put-parameter": {"rate": 1}, "dynamodb-partition-writes": "fast"},
        ["ssm-parameter-reads"],
    ],
)
def test_a_bad_quota_body_is_refused_and_changes_nothing(emulator: str, body: Any) -> None:
    before = control(emulator, "GET", "/_emulator/quotas")
    assert control_status(emulator, "POST", "/_emulator/quotas", body) == 400
    assert control(emulator, "GET", "/_emulator/quotas") == before


def test_an_emulator_with_a_bad_emulator_quotas_fails_at_start_naming_it() -> None:
    env = dict(os.environ, EMULATOR_QUOTAS="yes")
    done = subprocess.run(
        [sys.executable, str(SERVER), "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "EMULATOR_QUOTAS" in done.stderr
