"""Tests of the local AWS emulator itself (scripts/emulator/server.py).

The emulator must never be kinder than AWS and must be able to fail in every way AWS
does. These tests start it on a free port, provision the table with
scripts/emulator/provision.py, and check each behaviour with boto3 over the wire:
faults before and after the call is applied, dropped connections, DynamoDB's error
shapes, network latency that overlaps, TransactWriteItems token idempotency and
ReturnValuesOnConditionCheckFailure=ALL_OLD; the managed nodes /_emulator/register makes
(DescribeInstanceInformation's fields, filters and cursor pages, their tags,
DeregisterManagedInstance, aging them with /_emulator/nodes/ID) and GetParametersByPath
as AWS validates and pages it.

Run with tests/emulator/run.sh (or .venv/bin/python -m pytest tests/emulator).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterator

import boto3
import botocore.exceptions
import pytest
import urllib3.exceptions
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "scripts" / "emulator" / "server.py"
PROVISION = ROOT / "scripts" / "emulator" / "provision.py"
TABLE = "activation-vending"
REGION = "us-east-1"
# Where the session's emulator records the IAM requests of the service's calls.
IAM_CALLS_DIR = tempfile.mkdtemp(prefix="emulator-iam-calls-")
sys.path.insert(0, str(ROOT / "scripts" / "emulator"))
from emulator.iam_calls import SERVICE_ACCESS_KEY_ID  # noqa: E402


# --------------------------------------------------------------------------- fixtures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_emulator/health", timeout=1) as resp:
                if resp.read() == b"OK":
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("emulator did not become healthy")


def start_emulator(port: int, log: Any, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(SERVER), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_emulator(log_prefix: str, fixed_port: str | None = None, **extra_env: str) -> Iterator[str]:
    """An emulator with `extra_env` on `fixed_port` (or a free port), its table provisioned:
    yields its URL and stops it after. When starting or provisioning fails, the tail of its
    log goes to stderr."""
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION=REGION,
        **extra_env,
    )
    log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
    proc: subprocess.Popen[bytes] | None = None
    try:
        # A free port can be taken between our probe and the emulator's bind: try again.
        for attempt in range(1 if fixed_port else 3):
            port = int(fixed_port) if fixed_port else free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_emulator(port, log, env)
            try:
                wait_healthy(url, proc)
                break
            except RuntimeError:
                stop(proc)
                if fixed_port or attempt == 2:
                    raise
        subprocess.run(
            [sys.executable, str(PROVISION), "--endpoint", url], check=True, env=env, capture_output=True, timeout=60
        )
        yield url
    except BaseException:
        log.flush()
        sys.stderr.write(Path(log.name).read_text(errors="replace")[-4000:])
        raise
    finally:
        if proc is not None:
            stop(proc)
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    try:
        with running_emulator(
            "emulator-", os.environ.get("EMULATOR_TEST_PORT"), EMULATOR_IAM_CALLS_DIR=IAM_CALLS_DIR
        ) as url:
            yield url
    finally:
        shutil.rmtree(IAM_CALLS_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def clean(emulator: str) -> Iterator[None]:
    control(emulator, "DELETE", "/_emulator/faults")
    control(emulator, "DELETE", "/_emulator/latency")
    yield
    control(emulator, "DELETE", "/_emulator/faults")
    control(emulator, "DELETE", "/_emulator/latency")


def session() -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)


def client(url: str, service: str = "dynamodb", attempts: int = 1) -> Any:
    config = Config(
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=5,
        read_timeout=20,
    )
    return session().client(service, endpoint_url=url, config=config)


@pytest.fixture
def ddb(emulator: str) -> Any:
    return client(emulator)


def control(url: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, method=method, data=data)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def control_status(url: str, method: str, path: str, body: Any) -> int:
    try:
        control(url, method, path, body)
        return 200
    except urllib.error.HTTPError as err:
        return err.code


def inject(url: str, spec: Any) -> Any:
    return control(url, "POST", "/_emulator/faults", spec)


def raw_call(url: str, target: str, body: dict[str, Any], content_type: str) -> tuple[int, dict[str, str], bytes]:
    """One unsigned JSON-protocol call, to look at the answer's bytes."""
    req = urllib.request.Request(
        url + "/",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"X-Amz-Target": target, "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def new_key() -> dict[str, Any]:
    return {"pk": {"S": f"test-{uuid.uuid4()}"}}


def put(ddb: Any, key: dict[str, Any], **attrs: Any) -> None:
    ddb.put_item(TableName=TABLE, Item={**key, **attrs})


def get(ddb: Any, key: dict[str, Any]) -> dict[str, Any] | None:
    return ddb.get_item(TableName=TABLE, Key=key, ConsistentRead=True).get("Item")


def set_v(ddb: Any, key: dict[str, Any], value: int) -> Any:
    return ddb.update_item(
        TableName=TABLE,
        Key=key,
        UpdateExpression="SET v = :v",
        ExpressionAttributeValues={":v": {"N": str(value)}},
    )


def add_one(key: dict[str, Any]) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": TABLE,
            "Key": key,
            "UpdateExpression": "ADD n :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }


# --------------------------------------------------------------------------- before / after


def test_fault_before_does_not_apply_the_call(emulator: str, ddb: Any) -> None:
    key = new_key()
    put(ddb, key, v={"N": "0"})
    inject(emulator, {"operation": "DynamoDB.UpdateItem", "error": "ThrottlingException", "count": 1})
    with pytest.raises(ddb.exceptions.ThrottlingException):
        set_v(ddb, key, 1)
    assert get(ddb, key)["v"] == {"N": "0"}


def test_fault_after_applies_the_call_and_replaces_its_answer(emulator: str, ddb: Any) -> None:
    key = new_key()
    put(ddb, key, v={"N": "0"})
    inject(emulator, {"operation": "DynamoDB.UpdateItem", "error": "InternalServerError", "when": "after", "count": 1})
    with pytest.raises(ddb.exceptions.InternalServerError) as err:
        set_v(ddb, key, 1)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert get(ddb, key)["v"] == {"N": "1"}


def test_when_defaults_to_before_and_is_shown(emulator: str) -> None:
    shown = inject(
        emulator,
        [
            {"operation": "SSM.*", "error": "ThrottlingException", "rate": 0.5},
            {"operation": "DynamoDB.PutItem", "error": "ConnectionDropped", "when": "after", "count": 2},
        ],
    )
    assert [f["when"] for f in shown] == ["before", "after"]
    assert shown[1] == {
        "operation": "DynamoDB.PutItem",
        "error": "ConnectionDropped",
        "when": "after",
        "status": None,
        "rate": 1.0,
        "delay_ms": 0,
        "count": 2,
        "skip": 0,
    }
    assert control(emulator, "GET", "/_emulator/faults") == shown


@pytest.mark.parametrize(
    "spec",
    [
        {"operation": "*", "error": "ThrottlingException", "when": "later"},
        {"operation": "*", "error": "ThrottlingException", "whenn": "after"},
        {"operation": "*", "error": "ThrottlingException", "reasons": ["None"]},
        {"operation": "*", "error": "TransactionCanceledException", "reasons": "TransactionConflict"},
        {"operation": "*", "rate": 2},
        {"error": "ThrottlingException"},
    ],
)
def test_bad_fault_specs_are_refused_whole(emulator: str, spec: dict[str, Any]) -> None:
    good = {"operation": "DynamoDB.GetItem", "error": "ThrottlingException"}
    assert control_status(emulator, "POST", "/_emulator/faults", [good, spec]) == 400
    assert control(emulator, "GET", "/_emulator/faults") == []


def test_count_limits_faults(emulator: str, ddb: Any) -> None:
    key = new_key()
    put(ddb, key)
    inject(emulator, {"operation": "DynamoDB.GetItem", "error": "ThrottlingException", "count": 2})
    for _ in range(2):
        with pytest.raises(ddb.exceptions.ThrottlingException):
            get(ddb, key)
    assert get(ddb, key) == key
    assert control(emulator, "GET", "/_emulator/faults")[0]["count"] == 0


def test_rate_zero_never_fires_and_wildcards_match(emulator: str, ddb: Any) -> None:
    key = new_key()
    inject(emulator, [{"operation": "*", "error": "ThrottlingException", "rate": 0.0}])
    put(ddb, key)
    inject(emulator, {"operation": "DynamoDB.*", "error": "ThrottlingException", "count": 1})
    with pytest.raises(ddb.exceptions.ThrottlingException):
        get(ddb, key)


def test_after_delay_holds_the_answer_but_not_the_write(emulator: str, ddb: Any) -> None:
    """An UpdateItem whose answer is slow has already landed, and holds no lock."""
    key = new_key()
    put(ddb, key, v={"N": "0"})
    inject(emulator, {"operation": "DynamoDB.UpdateItem", "when": "after", "delay_ms": 1500, "count": 1})
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(set_v, client(emulator), key, 1)
        time.sleep(0.5)
        assert get(ddb, key)["v"] == {"N": "1"}
        assert not pending.done()
        pending.result()
    assert time.monotonic() - started >= 1.5


def test_before_delay_delays_the_write(emulator: str, ddb: Any) -> None:
    key = new_key()
    put(ddb, key, v={"N": "0"})
    inject(emulator, {"operation": "DynamoDB.UpdateItem", "delay_ms": 1500, "count": 1})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(set_v, client(emulator), key, 1)
        time.sleep(0.5)
        assert get(ddb, key)["v"] == {"N": "0"}
        pending.result()
    assert get(ddb, key)["v"] == {"N": "1"}


# --------------------------------------------------------------------------- dropped connections


@pytest.mark.parametrize("error", ["ConnectionDropped", "ConnectionReset"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_dropped_connection_is_a_network_error(emulator: str, ddb: Any, error: str, when: str) -> None:
    key = new_key()
    inject(emulator, {"operation": "DynamoDB.PutItem", "error": error, "when": when, "count": 1})
    with pytest.raises(botocore.exceptions.ConnectionClosedError) as err:
        put(ddb, key, v={"N": "7"})
    # No HTTP status at all: urllib3 saw the connection end before a response began.
    cause = err.value.kwargs["error"]
    assert isinstance(cause, urllib3.exceptions.ProtocolError)
    expected = http.client.RemoteDisconnected if error == "ConnectionDropped" else ConnectionResetError
    assert isinstance(cause.args[1], expected)
    landed = get(ddb, key)
    if when == "after":
        assert landed == {**key, "v": {"N": "7"}}
    else:
        assert landed is None


@pytest.mark.parametrize(("error", "seen"), [("ConnectionDropped", "eof"), ("ConnectionReset", "reset")])
def test_dropped_connection_sends_no_http_response(emulator: str, error: str, seen: str) -> None:
    inject(emulator, {"operation": "DynamoDB.ListTables", "error": error, "count": 1})
    port = int(emulator.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\n"
            b"Content-Type: application/x-amz-json-1.0\r\nContent-Length: 2\r\n\r\n{}"
        )
        try:
            got = sock.recv(65536)
        except ConnectionResetError:
            got = None
    assert got == (b"" if seen == "eof" else None)


def test_sdk_retry_after_a_lost_commit_answer_applies_it_once(emulator: str) -> None:
    """The answer to a committed transaction is lost; the SDK retries it with the same token."""
    retrying = client(emulator, attempts=3)
    key = new_key()
    inject(emulator, {"operation": "DynamoDB.TransactWriteItems", "error": "ConnectionDropped", "when": "after", "count": 1})
    out = retrying.transact_write_items(TransactItems=[add_one(key)])
    assert out["ResponseMetadata"]["RetryAttempts"] == 1
    assert get(retrying, key)["n"] == {"N": "1"}


def test_sdk_retries_throttling_and_5xx(emulator: str) -> None:
    retrying = client(emulator, attempts=4)
    key = new_key()
    put(retrying, key)
    inject(
        emulator,
        [
            {"operation": "DynamoDB.GetItem", "error": "ThrottlingException", "count": 1},
            {"operation": "DynamoDB.GetItem", "error": "ProvisionedThroughputExceededException", "count": 1},
            {"operation": "DynamoDB.GetItem", "error": "InternalServerError", "count": 1},
        ],
    )
    out = retrying.get_item(TableName=TABLE, Key=key)
    assert out["ResponseMetadata"]["RetryAttempts"] == 3
    assert control(emulator, "GET", "/_emulator/faults")[2]["count"] == 0


# --------------------------------------------------------------------------- error shapes


def test_transaction_conflict_is_dynamodb_shaped(emulator: str, ddb: Any) -> None:
    key = new_key()
    put(ddb, key, v={"N": "0"})
    inject(emulator, {"operation": "DynamoDB.UpdateItem", "error": "TransactionConflictException", "count": 2})
    with pytest.raises(ddb.exceptions.TransactionConflictException) as err:
        set_v(ddb, key, 1)
    assert err.value.response["Error"]["Code"] == "TransactionConflictException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    status, headers, body = raw_call(
        emulator,
        "DynamoDB_20120810.UpdateItem",
        {"TableName": TABLE, "Key": key, "UpdateExpression": "SET v = :v", "ExpressionAttributeValues": {":v": {"N": "2"}}},
        "application/x-amz-json-1.0",
    )
    assert status == 400
    assert headers["content-type"] == "application/x-amz-json-1.0"
    assert headers["x-amzn-errortype"] == "TransactionConflictException"
    assert headers["x-amzn-requestid"]
    assert int(headers["x-amz-crc32"]) == zlib.crc32(body)
    assert json.loads(body) == {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
        "message": "Transaction is ongoing for the item",
    }
    assert get(ddb, key)["v"] == {"N": "0"}


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        ("ThrottlingException", 400, "com.amazon.coral.availability#ThrottlingException"),
        ("ProvisionedThroughputExceededException", 400, "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"),
        ("InternalServerError", 500, "com.amazonaws.dynamodb.v20120810#InternalServerError"),
        ("RequestLimitExceeded", 400, "com.amazonaws.dynamodb.v20120810#RequestLimitExceeded"),
        ("TransactionInProgressException", 400, "com.amazonaws.dynamodb.v20120810#TransactionInProgressException"),
    ],
)
def test_dynamodb_errors_parse_as_modeled(emulator: str, ddb: Any, error: str, status: int, type_: str) -> None:
    inject(emulator, {"operation": "DynamoDB.GetItem", "error": error, "count": 2})
    with pytest.raises(getattr(ddb.exceptions, error)) as err:
        get(ddb, new_key())
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    got_status, headers, body = raw_call(
        emulator, "DynamoDB_20120810.GetItem", {"TableName": TABLE, "Key": new_key()}, "application/x-amz-json-1.0"
    )
    assert (got_status, headers["content-type"], json.loads(body)["__type"]) == (status, "application/x-amz-json-1.0", type_)


def test_transaction_canceled_default_reasons_one_per_item(emulator: str, ddb: Any) -> None:
    keys = [new_key() for _ in range(3)]
    inject(emulator, {"operation": "DynamoDB.TransactWriteItems", "error": "TransactionCanceledException", "count": 1})
    with pytest.raises(ddb.exceptions.TransactionCanceledException) as err:
        ddb.transact_write_items(TransactItems=[add_one(k) for k in keys])
    reasons = err.value.response["CancellationReasons"]
    assert reasons == [
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
        {"Code": "None"},
        {"Code": "None"},
    ]
    assert err.value.response["Error"]["Message"] == (
        "Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict, None, None]"
    )
    assert all(get(ddb, k) is None for k in keys)


@pytest.mark.parametrize(
    ("given", "items", "expected"),
    [
        (["None", "ConditionalCheckFailed"], 2, ["None", "ConditionalCheckFailed"]),
        (["ThrottlingError"], 3, ["ThrottlingError", "None", "None"]),
        (["TransactionConflict", "TransactionConflict", "TransactionConflict"], 2, ["TransactionConflict", "TransactionConflict"]),
    ],
)
def test_transaction_canceled_given_reasons(emulator: str, ddb: Any, given: list[str], items: int, expected: list[str]) -> None:
    inject(
        emulator,
        {"operation": "DynamoDB.TransactWriteItems", "error": "TransactionCanceledException", "reasons": given, "count": 1},
    )
    with pytest.raises(ddb.exceptions.TransactionCanceledException) as err:
        ddb.transact_write_items(TransactItems=[add_one(new_key()) for _ in range(items)])
    reasons = err.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == expected
    assert all(("Message" in r) == (r["Code"] != "None") for r in reasons)


def test_transaction_canceled_after_still_commits(emulator: str, ddb: Any) -> None:
    key = new_key()
    inject(
        emulator,
        {"operation": "DynamoDB.TransactWriteItems", "error": "TransactionCanceledException", "when": "after", "count": 1},
    )
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        ddb.transact_write_items(TransactItems=[add_one(key)])
    assert get(ddb, key)["n"] == {"N": "1"}


def test_ssm_errors_stay_json_1_1(emulator: str) -> None:
    ssm = client(emulator, "ssm")
    inject(emulator, {"operation": "SSM.GetParameter", "error": "ThrottlingException", "count": 2})
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.get_parameter(Name="/nope")
    assert err.value.response["Error"]["Code"] == "ThrottlingException"
    status, headers, body = raw_call(emulator, "AmazonSSM.GetParameter", {"Name": "/nope"}, "application/x-amz-json-1.1")
    assert status == 400
    assert headers["content-type"] == "application/x-amz-json-1.1"
    assert json.loads(body) == {"__type": "ThrottlingException", "message": "Injected fault: ThrottlingException"}
    # And moto's own SSM errors still parse into modeled errors.
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name="/nope")


def test_query_protocol_errors_are_xml(emulator: str) -> None:
    iam = client(emulator, "iam")
    inject(emulator, {"operation": "IAM.GetRole", "error": "Throttling", "message": "Rate exceeded", "count": 1})
    with pytest.raises(botocore.exceptions.ClientError) as err:
        iam.get_role(RoleName="activation-vending-managed-instance")
    assert err.value.response["Error"] == {"Type": "Sender", "Code": "Throttling", "Message": "Rate exceeded"}
    assert iam.get_role(RoleName="activation-vending-managed-instance")["Role"]


# --------------------------------------------------------------------------- latency


def test_latency_control(emulator: str) -> None:
    assert control(emulator, "GET", "/_emulator/latency") == {"ms": 0, "jitter_ms": 0}
    assert control(emulator, "POST", "/_emulator/latency", {"ms": 50, "jitter_ms": 10}) == {"ms": 50, "jitter_ms": 10}
    assert control(emulator, "GET", "/_emulator/latency") == {"ms": 50, "jitter_ms": 10}
    assert control_status(emulator, "POST", "/_emulator/latency", {"ms": -1}) == 400
    assert control_status(emulator, "POST", "/_emulator/latency", {"millis": 5}) == 400
    assert control(emulator, "DELETE", "/_emulator/latency") == {"ms": 0, "jitter_ms": 0}


def test_latency_is_added_and_overlaps(emulator: str, ddb: Any) -> None:
    key = new_key()
    put(ddb, key)
    clients = [client(emulator) for _ in range(10)]
    for c in clients:  # warm each client's endpoint resolution and connection pool
        c.get_item(TableName=TABLE, Key=key)
    control(emulator, "POST", "/_emulator/latency", {"ms": 200})

    started = time.monotonic()
    get(ddb, key)
    single = time.monotonic() - started
    assert single >= 0.2

    barrier = threading.Barrier(len(clients))

    def one(c: Any) -> None:
        barrier.wait()
        c.get_item(TableName=TABLE, Key=key)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(one, clients))
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0, f"10 concurrent calls at 200 ms took {elapsed:.2f}s"


def test_conditional_writes_stay_atomic_under_latency(emulator: str) -> None:
    key = new_key()
    ddb = client(emulator)
    put(ddb, key, reserved={"N": "0"})
    control(emulator, "POST", "/_emulator/latency", {"ms": 100, "jitter_ms": 50})

    def reserve(_: int) -> bool:
        try:
            client(emulator).update_item(
                TableName=TABLE,
                Key=key,
                UpdateExpression="ADD reserved :one",
                ConditionExpression="reserved < :limit",
                ExpressionAttributeValues={":one": {"N": "1"}, ":limit": {"N": "5"}},
            )
            return True
        except botocore.exceptions.ClientError as err:
            assert err.response["Error"]["Code"] == "ConditionalCheckFailedException"
            return False

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        won = sum(pool.map(reserve, range(20)))
    assert won == 5
    assert get(ddb, key)["reserved"] == {"N": "5"}


# --------------------------------------------------------------------------- TransactWriteItems tokens


def test_client_request_token_is_idempotent(emulator: str, ddb: Any) -> None:
    key = new_key()
    token = str(uuid.uuid4())
    ddb.transact_write_items(TransactItems=[add_one(key)], ClientRequestToken=token)
    assert get(ddb, key)["n"] == {"N": "1"}
    again = ddb.transact_write_items(TransactItems=[add_one(key)], ClientRequestToken=token)
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert get(ddb, key)["n"] == {"N": "1"}

    other = new_key()
    with pytest.raises(ddb.exceptions.IdempotentParameterMismatchException) as err:
        ddb.transact_write_items(TransactItems=[add_one(key), add_one(other)], ClientRequestToken=token)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert get(ddb, other) is None

    ddb.transact_write_items(TransactItems=[add_one(key)], ClientRequestToken=str(uuid.uuid4()))
    ddb.transact_write_items(TransactItems=[add_one(key)])  # botocore fills in a fresh token
    assert get(ddb, key)["n"] == {"N": "3"}


def test_cancelled_transaction_token_runs_again(emulator: str, ddb: Any) -> None:
    key = new_key()
    put(ddb, key, v={"N": "0"})
    token = str(uuid.uuid4())
    items = [
        {
            "Update": {
                "TableName": TABLE,
                "Key": key,
                "UpdateExpression": "SET v = :new",
                "ConditionExpression": "v = :old",
                "ExpressionAttributeValues": {":old": {"N": "1"}, ":new": {"N": "2"}},
            }
        }
    ]
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        ddb.transact_write_items(TransactItems=items, ClientRequestToken=token)
    set_v(ddb, key, 1)
    ddb.transact_write_items(TransactItems=items, ClientRequestToken=token)
    assert get(ddb, key)["v"] == {"N": "2"}
    with pytest.raises(ddb.exceptions.IdempotentParameterMismatchException):
        ddb.transact_write_items(TransactItems=[add_one(key)], ClientRequestToken=token)


# --------------------------------------------------------------------------- ALL_OLD on failed conditions


def test_all_old_on_failed_update_and_put(emulator: str, ddb: Any) -> None:
    key = new_key()
    put(ddb, key, v={"N": "3"})
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as err:
        ddb.update_item(
            TableName=TABLE,
            Key=key,
            UpdateExpression="SET v = :v",
            ConditionExpression="attribute_not_exists(pk)",
            ExpressionAttributeValues={":v": {"N": "4"}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert err.value.response["Item"] == {**key, "v": {"N": "3"}}

    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as err:
        ddb.put_item(
            TableName=TABLE,
            Item={**key, "v": {"N": "9"}},
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert err.value.response["Item"] == {**key, "v": {"N": "3"}}

    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException) as err:
        ddb.put_item(TableName=TABLE, Item={**key, "v": {"N": "9"}}, ConditionExpression="attribute_not_exists(pk)")
    assert "Item" not in err.value.response


def test_all_old_in_transaction_cancellation_reasons(emulator: str, ddb: Any) -> None:
    held, free = new_key(), new_key()
    put(ddb, held, v={"N": "1"})
    condition = {
        "TableName": TABLE,
        "UpdateExpression": "SET v = :v",
        "ConditionExpression": "attribute_not_exists(pk)",
        "ExpressionAttributeValues": {":v": {"N": "2"}},
    }
    with pytest.raises(ddb.exceptions.TransactionCanceledException) as err:
        ddb.transact_write_items(
            TransactItems=[
                add_one(free),
                {"Update": {**condition, "Key": held, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            ]
        )
    reasons = err.value.response["CancellationReasons"]
    assert reasons == [
        {"Code": "None"},
        {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed", "Item": {**held, "v": {"N": "1"}}},
    ]
    assert get(ddb, free) is None

    with pytest.raises(ddb.exceptions.TransactionCanceledException) as err:
        ddb.transact_write_items(TransactItems=[{"Update": {**condition, "Key": held}}])
    assert "Item" not in err.value.response["CancellationReasons"][0]


def test_a_cancelled_transaction_leaves_every_item_as_it_was(emulator: str, ddb: Any) -> None:
    # The emulator rolls back by restoring the items a transaction touched (moto
    # copies whole tables): updated, put and deleted items all come back.
    updated, created, deleted, held, bystander = (new_key() for _ in range(5))
    put(ddb, updated, v={"N": "1"})
    put(ddb, deleted, v={"N": "3"})
    put(ddb, held, v={"N": "4"})
    put(ddb, bystander, v={"N": "5"})
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        ddb.transact_write_items(
            TransactItems=[
                {"Update": {"TableName": TABLE, "Key": updated, "UpdateExpression": "SET v = :v",
                            "ExpressionAttributeValues": {":v": {"N": "2"}}}},
                {"Put": {"TableName": TABLE, "Item": {**created, "v": {"N": "9"}}}},
                {"Delete": {"TableName": TABLE, "Key": deleted}},
                {"Update": {"TableName": TABLE, "Key": held, "UpdateExpression": "SET v = :v",
                            "ConditionExpression": "attribute_not_exists(pk)",
                            "ExpressionAttributeValues": {":v": {"N": "8"}}}},
            ]
        )
    assert get(ddb, updated) == {**updated, "v": {"N": "1"}}
    assert get(ddb, created) is None
    assert get(ddb, deleted) == {**deleted, "v": {"N": "3"}}
    assert get(ddb, held) == {**held, "v": {"N": "4"}}
    assert get(ddb, bystander) == {**bystander, "v": {"N": "5"}}

    ddb.transact_write_items(TransactItems=[add_one(updated), add_one(created), add_one(bystander)])
    assert get(ddb, updated) == {**updated, "v": {"N": "1"}, "n": {"N": "1"}}
    assert get(ddb, created) == {**created, "n": {"N": "1"}}
    assert get(ddb, bystander) == {**bystander, "v": {"N": "5"}, "n": {"N": "1"}}


def test_calls_are_counted(emulator: str, ddb: Any) -> None:
    control(emulator, "DELETE", "/_emulator/calls")
    inject(emulator, {"operation": "DynamoDB.GetItem", "error": "ConnectionDropped", "count": 1})
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        get(ddb, new_key())
    get(ddb, new_key())
    assert control(emulator, "GET", "/_emulator/calls") == {"DynamoDB.GetItem": 2}


# --------------------------------------------------------------------------- managed nodes (issues 10, 11)

ROLE = "activation-vending-managed-instance"
POOL_TAG = "activation-vending:pool"
MI_ID = re.compile(r"^mi-[0-9a-f]{17}$")


@pytest.fixture
def ssm(emulator: str) -> Any:
    return client(emulator, "ssm")


@pytest.fixture
def raw_ssm(emulator: str) -> Any:
    """An SSM client that sends what it is given, so the emulator's own validation answers."""
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, parameter_validation=False)
    return session().client("ssm", endpoint_url=emulator, config=config)


def control_answer(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    try:
        return 200, control(url, method, path, body)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def new_activation(ssm: Any, pool: str | None = None, limit: int = 20, **extra: Any) -> tuple[str, str, str]:
    """(activation id, code, the pool tag value); every test gets a pool of its own."""
    pool = pool or f"pool-{uuid.uuid4().hex[:8]}"
    tags = [{"Key": POOL_TAG, "Value": pool}] + extra.pop("Tags", [])
    out = ssm.create_activation(IamRole=ROLE, RegistrationLimit=limit, DefaultInstanceName=f"vending-{pool}", Tags=tags, **extra)
    return out["ActivationId"], out["ActivationCode"], pool


def register(url: str, activation_id: str, code: str, name: str, **extra: Any) -> tuple[int, Any]:
    body = {"ActivationId": activation_id, "ActivationCode": code, "InstanceName": name, **extra}
    return control_answer(url, "POST", "/_emulator/register", body)


def register_ok(url: str, activation_id: str, code: str, name: str) -> str:
    status, body = register(url, activation_id, code, name)
    assert status == 200, body
    return str(body["InstanceId"])


def describe_all(ssm: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], int]:
    """Every node the filters select, following NextToken; and how many calls it took."""
    found: list[dict[str, Any]] = []
    calls, token = 0, None
    while True:
        page = ssm.describe_instance_information(**kwargs, **({"NextToken": token} if token else {}))
        calls += 1
        found += page["InstanceInformationList"]
        token = page.get("NextToken")
        if not token:
            return found, calls


def by_activation(activation_id: str) -> list[dict[str, Any]]:
    return [{"Key": "ActivationIds", "Values": [activation_id]}]


def error_code(err: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(err.value.response["Error"]["Code"])


def test_register_creates_a_managed_node_as_ssm_lists_it(emulator: str, ssm: Any) -> None:
    activation_id, code, pool = new_activation(ssm)
    before = time.time()
    instance_id = register_ok(emulator, activation_id, code, "web-01.example.internal")
    assert MI_ID.match(instance_id)
    (node,) = ssm.describe_instance_information(Filters=by_activation(activation_id))["InstanceInformationList"]
    assert node["InstanceId"] == instance_id
    assert node["ActivationId"] == activation_id
    assert node["IamRole"] == ROLE
    assert node["ComputerName"] == "web-01.example.internal"
    assert node["Name"] == f"vending-{pool}"  # the activation's DefaultInstanceName
    assert node["PingStatus"] == "Online"
    assert node["ResourceType"] == "ManagedInstance"
    assert node["PlatformType"] == "Linux"
    assert node["SourceId"] == instance_id and node["SourceType"] == "AWS::SSM::ManagedInstance"
    assert isinstance(node["IsLatestVersion"], bool) and re.match(r"^\d+\.\d+\.\d+\.\d+$", node["AgentVersion"])
    for field in ("RegistrationDate", "LastPingDateTime"):
        assert before - 1 <= node[field].timestamp() <= time.time() + 1, field
    # The agent may say more about itself (a Windows stand-in, say).
    status, body = register(emulator, activation_id, code, "win-01", PlatformType="Windows", IPAddress="10.1.2.3")
    assert status == 200
    (win,) = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [body["InstanceId"]]}])["InstanceInformationList"]
    assert (win["PlatformType"], win["IPAddress"], win["ComputerName"]) == ("Windows", "10.1.2.3", "win-01")


def test_a_node_carries_its_activations_tags(emulator: str, ssm: Any) -> None:
    activation_id, code, pool = new_activation(ssm, Tags=[{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": ""}])
    instance_id = register_ok(emulator, activation_id, code, "db-01")
    tags = ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=instance_id)["TagList"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == sorted([(POOL_TAG, pool), ("env", "prod"), ("team", "")])
    ssm.add_tags_to_resource(ResourceType="ManagedInstance", ResourceId=instance_id, Tags=[{"Key": "patch", "Value": "sunday"}])
    ssm.remove_tags_from_resource(ResourceType="ManagedInstance", ResourceId=instance_id, TagKeys=["env"])
    tags = ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=instance_id)["TagList"]
    assert sorted(t["Key"] for t in tags) == sorted([POOL_TAG, "team", "patch"])
    # The activation's tags stay as they were.
    (activation,) = ssm.describe_activations(Filters=[{"FilterKey": "ActivationIds", "FilterValues": [activation_id]}])["ActivationList"]
    assert {t["Key"] for t in activation["Tags"]} == {POOL_TAG, "env", "team"}
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId="mi-0123456789abcdef0")
    assert error_code(err) == "InvalidResourceId"


@pytest.mark.parametrize(
    "tags",
    [
        [{"Key": "aws:reserved", "Value": "x"}],
        [{"Key": "k" * 129, "Value": "x"}],
        [{"Key": "bad,comma", "Value": "x"}],
        [{"Key": "ok", "Value": "v" * 257}],
        [{"Key": "", "Value": "x"}],
    ],
    ids=["aws-prefix", "long-key", "comma", "long-value", "empty-key"],
)
def test_activation_tags_outside_ssms_alphabet_are_refused(raw_ssm: Any, tags: list[dict[str, str]]) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        raw_ssm.create_activation(IamRole=ROLE, Tags=tags)
    assert error_code(err) == "ValidationException"


def test_describe_activations_refuses_an_unknown_filter_key_even_where_no_activation_exists(emulator: str) -> None:
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, parameter_validation=False)
    empty_region = session().client("ssm", endpoint_url=emulator, config=config, region_name="eu-north-1")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        empty_region.describe_activations(Filters=[{"FilterKey": "Nope", "FilterValues": ["x"]}])
    assert refused.value.response["Error"]["Code"] == "InvalidFilter"


def test_activation_tags_in_ssms_alphabet_are_accepted(ssm: Any) -> None:
    tags = [{"Key": "Kostenstelle/Übersicht", "Value": "a b:c=d+e-f@g.h_i"}, {"Key": "n", "Value": ""}]
    new_activation(ssm, Tags=tags)


def test_filters_select_nodes(emulator: str, ssm: Any) -> None:
    a1, c1, pool1 = new_activation(ssm, Tags=[{"Key": "env", "Value": "prod"}])
    a2, c2, pool2 = new_activation(ssm, Tags=[{"Key": "env", "Value": "test"}])
    n1 = [register_ok(emulator, a1, c1, f"a-{i}") for i in range(3)]
    n2 = [register_ok(emulator, a2, c2, f"b-{i}") for i in range(2)]
    control(emulator, "POST", f"/_emulator/nodes/{n1[0]}", {"PingStatus": "ConnectionLost"})

    def ids(**kwargs: Any) -> set[str]:
        return {n["InstanceId"] for n in describe_all(ssm, **kwargs)[0]}

    assert ids(Filters=by_activation(a1)) == set(n1)
    assert ids(Filters=[{"Key": "ActivationIds", "Values": [a1, a2]}]) == set(n1 + n2)
    assert ids(Filters=[*by_activation(a1), {"Key": "PingStatus", "Values": ["ConnectionLost"]}]) == {n1[0]}
    assert ids(Filters=[*by_activation(a1), {"Key": "PingStatus", "Values": ["Online"]}]) == set(n1[1:])
    assert ids(Filters=[*by_activation(a2), {"Key": "ResourceType", "Values": ["ManagedInstance"]}]) == set(n2)
    assert ids(Filters=[*by_activation(a2), {"Key": "ResourceType", "Values": ["EC2Instance"]}]) == set()
    assert ids(Filters=[{"Key": f"tag:{POOL_TAG}", "Values": [pool1, pool2]}]) == set(n1 + n2)
    assert ids(Filters=[{"Key": f"tag:{POOL_TAG}", "Values": [pool2]}, {"Key": "tag:env", "Values": ["test"]}]) == set(n2)
    assert ids(Filters=[{"Key": f"tag:{POOL_TAG}", "Values": [pool1]}, {"Key": "tag:env", "Values": ["test"]}]) == set()
    assert set(n1 + n2) <= ids(Filters=[{"Key": "tag-key", "Values": ["env"]}])
    assert ids(InstanceInformationFilterList=[{"key": "ActivationIds", "valueSet": [a2]}]) == set(n2)
    assert ids(Filters=[{"Key": "InstanceIds", "Values": [n1[1], n2[0]]}]) == {n1[1], n2[0]}
    assert ids(Filters=[*by_activation(a1), {"Key": "IamRole", "Values": [ROLE]}]) == set(n1)


def test_a_tag_put_on_a_node_is_what_tag_filters_find_it_by(emulator: str, ssm: Any) -> None:
    """What a registration's confirmation relies on (issue 22): AddTagsToResource on a
    ManagedInstance adds beside the activation's tags, overwrites a key it sets again, and
    DescribeInstanceInformation's tag:KEY filters (ANDed) and InstanceIds find the node by
    it; a node that is gone cannot be tagged."""
    activation_id, code, pool = new_activation(ssm)
    first, second = (register_ok(emulator, activation_id, code, f"m-{i}") for i in range(2))
    digest = "ab" * 32
    ssm.add_tags_to_resource(ResourceType="ManagedInstance", ResourceId=first, Tags=[{"Key": "Name", "Value": "old"}])
    ssm.add_tags_to_resource(
        ResourceType="ManagedInstance", ResourceId=first, Tags=[{"Key": "Name", "Value": "web-01"}, {"Key": "activation-vending:machine-id", "Value": digest}]
    )
    tags = {t["Key"]: t["Value"] for t in ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=first)["TagList"]}
    assert tags == {POOL_TAG: pool, "Name": "web-01", "activation-vending:machine-id": digest}

    def ids(filters: list[dict[str, Any]]) -> set[str]:
        return {n["InstanceId"] for n in describe_all(ssm, Filters=filters)[0]}

    machine = {"Key": "tag:activation-vending:machine-id", "Values": [digest]}
    assert ids([machine]) == {first}
    assert ids([machine, {"Key": f"tag:{POOL_TAG}", "Values": [pool]}]) == {first}
    assert ids([machine, {"Key": f"tag:{POOL_TAG}", "Values": ["another-pool"]}]) == set()
    (node,) = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [second]}])["InstanceInformationList"]
    assert node["InstanceId"] == second and node["ActivationId"] == activation_id
    ssm.deregister_managed_instance(InstanceId=first)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.add_tags_to_resource(ResourceType="ManagedInstance", ResourceId=first, Tags=[{"Key": "Name", "Value": "web-01"}])
    assert error_code(err) == "InvalidResourceId"
    assert ids([machine]) == set()


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"Filters": [{"Key": "Nope", "Values": ["x"]}]}, "InvalidFilterKey"),
        ({"Filters": [{"Key": "tag:", "Values": ["x"]}]}, "InvalidFilterKey"),
        ({"Filters": [{"Key": "tag-keys", "Values": ["x"]}]}, "InvalidFilterKey"),
        ({"Filters": [{"Key": "PingStatus", "Values": ["Sleeping"]}]}, "InvalidInstanceInformationFilterValue"),
        ({"Filters": [{"Key": "ResourceType", "Values": ["ManagedInstance", "EC2Instance"]}]}, "InvalidInstanceInformationFilterValue"),
        ({"Filters": [{"Key": "tag:env", "Values": ["x"]}, {"Key": "PingStatus", "Values": ["Online"]}]}, "InvalidInstanceInformationFilterValue"),
        ({"Filters": [{"Key": "InstanceIds", "Values": ["mi-0123456789abcdef0"]}]}, "InvalidInstanceId"),
        ({"Filters": [{"Key": "PingStatus", "Values": []}]}, "ValidationException"),
        ({"Filters": [{"Key": "PingStatus", "Values": ["Online"]}], "InstanceInformationFilterList": [{"key": "PingStatus", "valueSet": ["Online"]}]}, "ValidationException"),
        ({"InstanceInformationFilterList": [{"key": "tag:env", "valueSet": ["x"]}]}, "ValidationException"),
        ({"MaxResults": 4}, "ValidationException"),
        ({"MaxResults": 51}, "ValidationException"),
        ({"NextToken": "not-a-token"}, "InvalidNextToken"),
    ],
    ids=[
        "unknown-key", "empty-tag-key", "tag-keys", "bad-ping-status", "two-resource-types", "tag-and-plain",
        "unknown-instance", "no-values", "both-filter-lists", "legacy-tag", "max-4", "max-51", "bad-token",
    ],
)
def test_describe_instance_information_refuses_what_ssm_refuses(raw_ssm: Any, kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        raw_ssm.describe_instance_information(**kwargs)
    assert error_code(err) == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_describe_instance_information_pages_by_max_results(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm, limit=30)
    registered = [register_ok(emulator, activation_id, code, f"n-{i}") for i in range(23)]
    first = ssm.describe_instance_information(Filters=by_activation(activation_id))
    assert len(first["InstanceInformationList"]) == 10  # SSM's default page
    assert first["NextToken"]
    for size, calls in ((5, 5), (10, 3), (50, 1)):
        found, used = describe_all(ssm, Filters=by_activation(activation_id), MaxResults=size)
        assert [n["InstanceId"] for n in found] == registered
        assert used == calls
    # boto3's own paginator follows the same tokens.
    pages = ssm.get_paginator("describe_instance_information").paginate(Filters=by_activation(activation_id), PaginationConfig={"PageSize": 7})
    assert [n["InstanceId"] for p in pages for n in p["InstanceInformationList"]] == registered


def test_next_token_is_a_cursor_that_survives_deregistration(emulator: str, ssm: Any) -> None:
    """A node deregistered between two pages shifts nothing: no node is skipped or repeated."""
    activation_id, code, _ = new_activation(ssm, limit=30)
    registered = [register_ok(emulator, activation_id, code, f"c-{i}") for i in range(15)]
    page = ssm.describe_instance_information(Filters=by_activation(activation_id), MaxResults=5)
    seen = [n["InstanceId"] for n in page["InstanceInformationList"]]
    assert seen == registered[:5]
    # Gone between pages: two already seen, one not seen yet.
    for gone in (registered[0], registered[3], registered[7]):
        ssm.deregister_managed_instance(InstanceId=gone)
    token = page["NextToken"]
    while token:
        page = ssm.describe_instance_information(Filters=by_activation(activation_id), MaxResults=5, NextToken=token)
        seen += [n["InstanceId"] for n in page["InstanceInformationList"]]
        token = page.get("NextToken")
    assert seen == [i for i in registered if i != registered[7]]


def test_tag_filters_page_before_filtering_like_ssm(emulator: str, ssm: Any) -> None:
    """With tag filters SSM counts MaxResults over the nodes it looks at, so pages can be
    short or even empty and still carry a NextToken: a client must follow it to the end."""
    mine, code, pool = new_activation(ssm, limit=10)
    other, other_code, _ = new_activation(ssm, limit=20)
    for i in range(12):
        register_ok(emulator, other, other_code, f"other-{i}")
    wanted = [register_ok(emulator, mine, code, f"mine-{i}") for i in range(2)]
    pages = []
    token = None
    while True:
        page = ssm.describe_instance_information(
            Filters=[{"Key": f"tag:{POOL_TAG}", "Values": [pool]}], MaxResults=5, **({"NextToken": token} if token else {})
        )
        pages.append([n["InstanceId"] for n in page["InstanceInformationList"]])
        token = page.get("NextToken")
        if not token:
            break
    assert [i for p in pages for i in p] == wanted
    assert any(p == [] for p in pages[:-1]), f"expected an empty page before the end, got {pages}"


def test_deregister_removes_the_node_but_never_frees_a_slot(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm, limit=2)
    first = register_ok(emulator, activation_id, code, "r-1")
    second = register_ok(emulator, activation_id, code, "r-2")
    ssm.deregister_managed_instance(InstanceId=first)
    assert [n["InstanceId"] for n in describe_all(ssm, Filters=by_activation(activation_id))[0]] == [second]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=first)
    assert error_code(err) == "InvalidResourceId"
    # As in SSM: the registration stays counted and the slot stays used.
    (activation,) = ssm.describe_activations(Filters=[{"FilterKey": "ActivationIds", "FilterValues": [activation_id]}])["ActivationList"]
    assert activation["RegistrationsCount"] == 2
    assert register(emulator, activation_id, code, "r-3") == (400, {"error": "RegistrationLimitExceeded"})
    # Reported as gone, for tests.
    gone = control(emulator, "GET", "/_emulator/nodes")["Deregistered"]
    assert {"InstanceId": first, "ActivationId": activation_id, "ComputerName": "r-1"}.items() <= next(
        g for g in gone if g["InstanceId"] == first
    ).items()
    for again in (first, "mi-0123456789abcdef0"):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            ssm.deregister_managed_instance(InstanceId=again)
        assert error_code(err) == "InvalidInstanceId"


def test_deregister_validates_the_id(raw_ssm: Any) -> None:
    for bad in ("i-0123456789abcdef0", "mi-0123", "mi-0123456789ABCDEF0"):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            raw_ssm.deregister_managed_instance(InstanceId=bad)
        assert error_code(err) == "ValidationException"


def test_register_verdicts(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm, limit=1)
    wrong = ("A" if code[0] != "A" else "B") + code[1:]
    assert register(emulator, activation_id, wrong, "v-1") == (400, {"error": "InvalidActivation"})
    assert register(emulator, str(uuid.uuid4()), code, "v-1") == (400, {"error": "InvalidActivation"})
    register_ok(emulator, activation_id, code, "v-1")
    assert register(emulator, activation_id, code, "v-2") == (400, {"error": "RegistrationLimitExceeded"})
    status, body = register(emulator, activation_id, code, "v-3", Colour="blue")
    assert status == 400 and body["error"] == "BadRequest"


def test_register_refuses_a_deleted_activation(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm, limit=5)
    node = register_ok(emulator, activation_id, code, "d-1")
    ssm.delete_activation(ActivationId=activation_id)
    assert register(emulator, activation_id, code, "d-2") == (400, {"error": "InvalidActivation"})
    # Nodes registered before stay managed, as in SSM.
    assert [n["InstanceId"] for n in describe_all(ssm, Filters=by_activation(activation_id))[0]] == [node]


def test_register_refuses_an_expired_activation(emulator: str, ssm: Any) -> None:
    expires = time.time() + 1.5
    activation_id, code, _ = new_activation(ssm, limit=5, ExpirationDate=expires)
    time.sleep(max(0.0, expires - time.time()) + 0.1)
    assert register(emulator, activation_id, code, "e-1") == (400, {"error": "ActivationExpired"})


def test_nodes_can_be_aged_for_tests(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm)
    node = register_ok(emulator, activation_id, code, "old-01")
    aged = control(
        emulator,
        "POST",
        f"/_emulator/nodes/{node}",
        {"PingStatus": "ConnectionLost", "LastPingDateTime": "2024-05-01T10:00:00Z", "RegistrationDate": 1700000000},
    )
    assert aged["InstanceId"] == node
    assert (aged["PingStatus"], aged["LastPingDateTime"], aged["RegistrationDate"]) == (
        "ConnectionLost",
        "2024-05-01T10:00:00.000Z",
        "2023-11-14T22:13:20.000Z",
    )
    (seen,) = ssm.describe_instance_information(
        Filters=[*by_activation(activation_id), {"Key": "PingStatus", "Values": ["ConnectionLost"]}]
    )["InstanceInformationList"]
    assert seen["LastPingDateTime"].timestamp() == 1714557600
    assert seen["RegistrationDate"].timestamp() == 1700000000
    assert control(emulator, "GET", f"/_emulator/nodes/{node}") == aged
    # Partial updates keep the rest; an offset is understood.
    again = control(emulator, "POST", f"/_emulator/nodes/{node}", {"LastPingDateTime": "2024-05-01T12:00:00+02:00"})
    assert (again["PingStatus"], again["LastPingDateTime"]) == ("ConnectionLost", "2024-05-01T10:00:00.000Z")
    assert control_answer(emulator, "POST", "/_emulator/nodes/mi-0123456789abcdef0", {"PingStatus": "Online"}) == (
        404,
        {"error": "InvalidInstanceId", "message": "no managed node mi-0123456789abcdef0"},
    )
    for bad in ({"PingStatus": "Asleep"}, {"LastPingDateTime": "yesterday"}, {"ComputerName": "x"}, ["Online"]):
        status, body = control_answer(emulator, "POST", f"/_emulator/nodes/{node}", bad)
        assert (status, body["error"]) == (400, "BadRequest"), bad


def test_node_calls_are_counted_and_can_fail(emulator: str, ssm: Any) -> None:
    control(emulator, "DELETE", "/_emulator/calls")
    inject(emulator, {"operation": "SSM.DescribeInstanceInformation", "error": "ThrottlingException", "count": 1})
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ssm.describe_instance_information()
    assert error_code(err) == "ThrottlingException"
    ssm.describe_instance_information()
    assert control(emulator, "GET", "/_emulator/calls") == {"SSM.DescribeInstanceInformation": 2}


# --------------------------------------------------------------------------- GetParametersByPath


@pytest.fixture
def pools_prefix(ssm: Any) -> str:
    """A fresh prefix holding 12 pool configs, one code and a parameter outside /pools."""
    prefix = f"/t-{uuid.uuid4().hex[:8]}"
    for i in range(12):
        ssm.put_parameter(Name=f"{prefix}/pools/p{i:02d}/config", Value=json.dumps({"iam_role": ROLE}), Type="String")
    ssm.put_parameter(Name=f"{prefix}/pools/p00/activation", Value="secret-code", Type="SecureString")
    ssm.put_parameter(Name=f"{prefix}/pools/readme", Value="x", Type="String")
    ssm.put_parameter(Name=f"{prefix}/other", Value="x", Type="String")
    return prefix


def by_path_all(ssm: Any, **kwargs: Any) -> tuple[list[str], list[int]]:
    names: list[str] = []
    sizes: list[int] = []
    token = kwargs.pop("NextToken", None)
    while True:
        page = ssm.get_parameters_by_path(**kwargs, **({"NextToken": token} if token else {}))
        names += [p["Name"] for p in page["Parameters"]]
        sizes.append(len(page["Parameters"]))
        token = page.get("NextToken")
        if not token:
            return names, sizes


def test_get_parameters_by_path_one_level_and_recursive(ssm: Any, pools_prefix: str) -> None:
    one_level, _ = by_path_all(ssm, Path=f"{pools_prefix}/pools")
    assert one_level == [f"{pools_prefix}/pools/readme"]
    everything, sizes = by_path_all(ssm, Path=f"{pools_prefix}/pools/", Recursive=True, MaxResults=10)
    expected = sorted(
        [f"{pools_prefix}/pools/p{i:02d}/config" for i in range(12)] + [f"{pools_prefix}/pools/p00/activation", f"{pools_prefix}/pools/readme"]
    )
    assert everything == expected
    assert sizes == [10, 4]
    for size in (1, 3, 7):
        assert by_path_all(ssm, Path=f"{pools_prefix}/pools", Recursive=True, MaxResults=size)[0] == expected
    pages = ssm.get_paginator("get_parameters_by_path").paginate(Path=f"{pools_prefix}/pools", Recursive=True)
    assert [p["Name"] for page in pages for p in page["Parameters"]] == expected


def test_get_parameters_by_path_decrypts_on_request(ssm: Any, pools_prefix: str) -> None:
    path = f"{pools_prefix}/pools/p00"
    values = {p["Name"]: p["Value"] for p in ssm.get_parameters_by_path(Path=path, WithDecryption=True)["Parameters"]}
    assert values[f"{path}/activation"] == "secret-code"
    assert json.loads(values[f"{path}/config"]) == {"iam_role": ROLE}


def test_get_parameters_by_path_cursor_survives_deletes(ssm: Any, pools_prefix: str) -> None:
    path = f"{pools_prefix}/pools"
    page = ssm.get_parameters_by_path(Path=path, Recursive=True, MaxResults=4)
    seen = [p["Name"] for p in page["Parameters"]]
    ssm.delete_parameter(Name=seen[0])
    ssm.delete_parameter(Name=f"{path}/p05/config")
    rest, _ = by_path_all(ssm, Path=path, Recursive=True, MaxResults=4, NextToken=page["NextToken"])
    assert len(seen + rest) == len(set(seen + rest)) == 13
    assert f"{path}/p05/config" not in rest


def test_get_parameters_by_path_filters_page_before_filtering(ssm: Any, pools_prefix: str) -> None:
    names, sizes = by_path_all(
        ssm, Path=f"{pools_prefix}/pools", Recursive=True, MaxResults=3, ParameterFilters=[{"Key": "Type", "Values": ["SecureString"]}]
    )
    assert names == [f"{pools_prefix}/pools/p00/activation"]
    assert len(sizes) == 5 and 0 in sizes  # 14 parameters looked at 3 by 3


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"MaxResults": 0}, "ValidationException"),
        ({"MaxResults": 11}, "ValidationException"),
        ({"NextToken": "garbage"}, "InvalidNextToken"),
        ({"ParameterFilters": [{"Key": "tag:team", "Values": ["x"]}]}, "InvalidFilterKey"),
        ({"ParameterFilters": [{"Key": "Name", "Values": ["x"]}]}, "InvalidFilterKey"),
        ({"ParameterFilters": [{"Key": "Path", "Values": ["/x"]}]}, "InvalidFilterKey"),
        ({"Path": "no-slash"}, "ValidationException"),
        ({"Path": "/" + "/".join("abcdefghijklmnop")}, "ValidationException"),
    ],
    ids=["max-0", "max-11", "bad-token", "tag-filter", "name-filter", "path-filter", "no-slash", "16-levels"],
)
def test_get_parameters_by_path_refuses_what_ssm_refuses(raw_ssm: Any, pools_prefix: str, kwargs: dict[str, Any], code: str) -> None:
    args = {"Path": f"{pools_prefix}/pools", "Recursive": True, **kwargs}
    with pytest.raises(botocore.exceptions.ClientError) as err:
        raw_ssm.get_parameters_by_path(**args)
    assert error_code(err) == code


# --------------------------------------------------------------------------- who wrote a parameter, AWS-managed keys


def ssm_as(url: str, access_key: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key="test", region_name=REGION
    ).client("ssm", endpoint_url=url)


def last_writer(ssm: Any, name: str) -> str:
    found = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"]
    return str(found[0]["LastModifiedUser"])


def test_a_parameter_s_last_modified_user_is_the_caller_s_principal(emulator: str) -> None:
    admin = "arn:aws:iam::123456789012:role/pool-admin"
    control(emulator, "POST", "/_emulator/principals", {"AKIAPOOLADMIN": admin})
    assert control(emulator, "GET", "/_emulator/principals")["AKIAPOOLADMIN"] == admin
    name = f"/who/{uuid.uuid4()}/config"
    ssm_as(emulator, "AKIAPOOLADMIN").put_parameter(Name=name, Value="{}", Type="String")
    reader = ssm_as(emulator, "test")
    assert last_writer(reader, name) == admin
    # Someone else overwrites it: the last writer is who wrote last, unmapped or not.
    ssm_as(emulator, "AKIASOMEONEELSE").put_parameter(Name=name, Value="{}", Type="String", Overwrite=True)
    assert last_writer(reader, name) == "arn:aws:iam::123456789012:user/AKIASOMEONEELSE"
    control(emulator, "DELETE", "/_emulator/principals")
    assert control(emulator, "GET", "/_emulator/principals") == {}


def test_principals_must_be_arns(emulator: str) -> None:
    assert control_status(emulator, "POST", "/_emulator/principals", {"AKIAX": "pool-admin"}) == 400


def test_the_aws_managed_ssm_key_is_described_as_aws_managed(emulator: str) -> None:
    kms = client(emulator, "kms")
    assert kms.describe_key(KeyId="alias/aws/ssm")["KeyMetadata"]["KeyManager"] == "AWS"
    own = kms.create_key(Description="mine")["KeyMetadata"]
    assert own["KeyManager"] == "CUSTOMER"


# --------------------------------------------------------------------------- IAM requests of the service's calls


def service_client(url: str, service: str, region: str = REGION) -> Any:
    """A client signing as `vending` does in the suites (provision.py's access key)."""
    return boto3.session.Session(
        aws_access_key_id=SERVICE_ACCESS_KEY_ID, aws_secret_access_key="test", region_name=region
    ).client(service, endpoint_url=url, config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


def iam_records() -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(Path(IAM_CALLS_DIR).glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def asked_for(operation: str, marker: str) -> list[dict[str, Any]]:
    """The IAM requests recorded for `operation` calls whose requests mention `marker`."""
    return [
        asked
        for record in iam_records()
        if record["operation"] == operation and marker in json.dumps(record)
        for asked in record["requests"]
    ]


def test_only_the_services_calls_are_recorded(emulator: str, ddb: Any) -> None:
    mine, theirs = new_key(), new_key()
    put(ddb, theirs, v={"N": "1"})
    service_client(emulator, "dynamodb").put_item(TableName=TABLE, Item={**mine, "v": {"N": "1"}})
    assert asked_for("DynamoDB.PutItem", theirs["pk"]["S"]) == []
    [asked] = asked_for("DynamoDB.PutItem", mine["pk"]["S"])
    assert asked["action"] == "dynamodb:PutItem"
    assert asked["resource"] == f"arn:aws:dynamodb:{REGION}:123456789012:table/{TABLE}"
    assert asked["context"] == {"aws:RequestedRegion": REGION, "dynamodb:LeadingKeys": [mine["pk"]["S"]]}


def test_a_transaction_asks_for_each_items_action(emulator: str) -> None:
    first, second = new_key(), new_key()
    service_client(emulator, "dynamodb").transact_write_items(
        TransactItems=[add_one(first), {"Put": {"TableName": TABLE, "Item": {**second, "v": {"N": "2"}}}}]
    )
    asked = asked_for("DynamoDB.TransactWriteItems", first["pk"]["S"])
    assert [(a["action"], a["context"]["dynamodb:LeadingKeys"]) for a in asked] == [
        ("dynamodb:UpdateItem", [first["pk"]["S"]]),
        ("dynamodb:PutItem", [second["pk"]["S"]]),
    ]


def test_a_batch_read_asks_for_batch_get_item(emulator: str) -> None:
    key = new_key()
    service_client(emulator, "dynamodb").batch_get_item(RequestItems={TABLE: {"Keys": [key]}})
    [asked] = asked_for("DynamoDB.BatchGetItem", key["pk"]["S"])
    assert asked["action"] == "dynamodb:BatchGetItem"
    assert asked["resource"].endswith(f":table/{TABLE}")


def test_a_decrypted_read_asks_kms_through_ssm_for_the_parameters_key(emulator: str) -> None:
    ssm, kms = service_client(emulator, "ssm"), client(emulator, "kms")
    key_arn = kms.describe_key(KeyId="alias/activation-vending")["KeyMetadata"]["Arn"]
    name = f"/iam-{uuid.uuid4().hex[:8]}/pools/p/activation"
    ssm.put_parameter(Name=name, Value="x", Type="SecureString", KeyId="alias/activation-vending", Overwrite=True)
    ssm.get_parameter(Name=f"{name}:1", WithDecryption=True)
    arn = f"arn:aws:ssm:{REGION}:123456789012:parameter{name}"
    put_asked = asked_for("SSM.PutParameter", name)
    assert [(a["action"], a["resource"]) for a in put_asked] == [("ssm:PutParameter", arn), ("kms:Encrypt", key_arn)]
    assert put_asked[0]["context"]["ssm:Overwrite"] == "true"
    get_asked = asked_for("SSM.GetParameter", name)
    assert [(a["action"], a["resource"]) for a in get_asked] == [("ssm:GetParameter", arn), ("kms:Decrypt", key_arn)]
    assert get_asked[1]["context"] == {
        "aws:RequestedRegion": REGION,
        "kms:ViaService": f"ssm.{REGION}.amazonaws.com",
        "kms:CallerAccount": "123456789012",
        "kms:EncryptionContext:PARAMETER_ARN": arn,
        "kms:EncryptionContextKeys": ["PARAMETER_ARN"],
    }
    [record] = [r for r in iam_records() if r["operation"] == "SSM.GetParameter" and name in json.dumps(r)]
    assert record["parameter_prefix"] == name.split("/pools")[0]


def test_create_activation_asks_for_tags_and_the_passed_role_in_the_signed_region(emulator: str) -> None:
    region = "eu-central-1"
    ssm = service_client(emulator, "ssm", region)
    description = f"iam-{uuid.uuid4()}"
    ssm.create_activation(
        IamRole="activation-vending-managed-instance",
        Description=description,
        Tags=[{"Key": "activation-vending:pool", "Value": "web"}],
    )
    asked = asked_for("SSM.CreateActivation", "activation-vending:pool")
    tagged = {"aws:RequestedRegion": region, "aws:RequestTag/activation-vending:pool": "web", "aws:TagKeys": ["activation-vending:pool"]}
    assert {"action": "ssm:CreateActivation", "resource": "*", "context": tagged} in asked
    assert {"action": "ssm:AddTagsToResource", "resource": "*", "context": tagged} in asked
    assert {
        "action": "iam:PassRole",
        "resource": "arn:aws:iam::123456789012:role/activation-vending-managed-instance",
        "context": {"aws:RequestedRegion": region, "iam:PassedToService": "ssm.amazonaws.com"},
    } in asked


# --------------------------------------------------------------------------- sealed codes (KMS direct)

SEALED_CONTEXT = {
    "activation-vending:deployment": TABLE,
    "activation-vending:pool": "web",
    "activation-vending:activation": "act-1",
}


def test_a_ciphertext_opens_only_under_the_encryption_context_it_was_sealed_with(emulator: str) -> None:
    """As at AWS: Decrypt with another or no encryption context is InvalidCiphertextException
    (moto binds the context as AES-GCM's additional data; no patch needed)."""
    kms = client(emulator, "kms")
    sealed = kms.encrypt(KeyId="alias/activation-vending", Plaintext=b"CODE-1", EncryptionContext=SEALED_CONTEXT)[
        "CiphertextBlob"
    ]
    opened = kms.decrypt(KeyId="alias/activation-vending", CiphertextBlob=sealed, EncryptionContext=SEALED_CONTEXT)
    assert opened["Plaintext"] == b"CODE-1"
    others = [
        {**SEALED_CONTEXT, "activation-vending:pool": "db"},
        {**SEALED_CONTEXT, "activation-vending:activation": "act-2"},
        {**SEALED_CONTEXT, "activation-vending:deployment": "another-table"},
        {**SEALED_CONTEXT, "extra": "x"},
        {k: v for k, v in SEALED_CONTEXT.items() if k != "activation-vending:pool"},
        {},
    ]
    for other in others:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            kms.decrypt(KeyId="alias/activation-vending", CiphertextBlob=sealed, EncryptionContext=other)
        assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException", other
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        kms.decrypt(KeyId="alias/activation-vending", CiphertextBlob=sealed[:-1] + bytes([sealed[-1] ^ 1]),
                    EncryptionContext=SEALED_CONTEXT)
    assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException"


def test_a_direct_encrypt_and_decrypt_ask_kms_with_their_encryption_context(emulator: str) -> None:
    kms = service_client(emulator, "kms")
    key_arn = client(emulator, "kms").describe_key(KeyId="alias/activation-vending")["KeyMetadata"]["Arn"]
    context = {**SEALED_CONTEXT, "activation-vending:activation": f"act-{uuid.uuid4().hex[:8]}"}
    sealed = kms.encrypt(KeyId="alias/activation-vending", Plaintext=b"CODE-2", EncryptionContext=context)[
        "CiphertextBlob"
    ]
    kms.decrypt(CiphertextBlob=sealed, EncryptionContext=context)  # no KeyId: the ciphertext's key
    marker = context["activation-vending:activation"]
    expected = {
        "aws:RequestedRegion": REGION,
        "kms:CallerAccount": "123456789012",
        **{f"kms:EncryptionContext:{k}": v for k, v in context.items()},
        "kms:EncryptionContextKeys": sorted(context),
    }
    for operation, action in [("KMS.Encrypt", "kms:Encrypt"), ("KMS.Decrypt", "kms:Decrypt")]:
        [asked] = asked_for(operation, marker)
        assert (asked["action"], asked["resource"]) == (action, key_arn)
        assert asked["context"] == expected
    assert "CODE-2" not in json.dumps(iam_records()), "the recorder never keeps a plaintext"


def test_contexts_whose_keys_and_values_run_together_alike_are_still_two_contexts(emulator: str) -> None:
    """moto alone serialized {"ab": "c"} and {"a": "bc"} alike (patches.py, kms_keys.py)."""
    kms = client(emulator, "kms")
    sealed = kms.encrypt(KeyId="alias/activation-vending", Plaintext=b"CODE-3", EncryptionContext={"ab": "c"})[
        "CiphertextBlob"
    ]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        kms.decrypt(CiphertextBlob=sealed, EncryptionContext={"a": "bc"})
    assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException"
    assert kms.decrypt(CiphertextBlob=sealed, EncryptionContext={"ab": "c"})["Plaintext"] == b"CODE-3"
