"""Would the deployed roles allow every AWS call `vending` made in the test suites?

The emulator enforces no IAM, so the suites pass whatever the templates grant. Each
emulator the suites start records the IAM requests of the service's own calls
(scripts/emulator/emulator/iam_calls.py: action, resource ARN, context keys; EMULATOR_IAM_CALLS_DIR,
one directory per suite under target/iam-calls). This module evaluates every recorded
request against

  * template.yaml: the Lambda function's role (FunctionRole and FunctionKeyPolicy), and
  * deploy/ecs/template.yaml: the ECS task role (TaskRole and TaskKeyPolicy),

each deployed as the template defines it (conditions, Fn::If, the SAM transform, as the
template gates read them: tests/template/*.py), resolved with the values the recorded call
used: its account and Region, its table, the parameter prefix of its parameters, the roles
it passed to SSM (PoolRoleNames). KMS requests on the stack's own key are also evaluated
against that key's policy. The evaluator is @cloud-copilot/iam-simulate (Node, pinned in
tests/iam/package.json, installed by tests/template/setup.sh), in strict mode.

Run alone: tests/iam/run.sh (or `make test-iam`) after the suites (test-rust,
test-contract, test-scripts) recorded; `IAM_CALLS_DIR` (default target/iam-calls) and
`IAM_REQUIRED_SUITES` (default "rust contract scripts") say where and what. No record, or a
required suite without one, fails: a check over nothing would prove nothing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "template"))

import test_ecs_template as ecs  # noqa: E402
import test_template_security as sam  # noqa: E402
from cfn_helpers import as_list, load_template, props  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CALLS_DIR = ROOT / "target" / "iam-calls"
DEFAULT_SUITES = ("rust", "contract", "scripts")
# What the suites provision (scripts/emulator/provision.py): the defaults when a call does
# not say (an SSM call names no table).
PROVISIONED = {"table": "activation-vending", "prefix": "/activation-vending", "role": "activation-vending-managed-instance"}
STACK = "vending"
URL_SUFFIX = "amazonaws.com"
PARTITION = "aws"


# ------------------------------------------------------------------ records


def load_records(calls_dir: Path, suites: Iterable[str]) -> list[dict[str, Any]]:
    """Every recorded call, each tagged with its suite. Raises when a required suite
    recorded nothing."""
    records: list[dict[str, Any]] = []
    empty = []
    for suite in suites:
        found = 0
        for path in sorted((calls_dir / suite).glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    record["suite"] = suite
                    records.append(record)
                    found += 1
        if not found:
            empty.append(suite)
    broken = [r for r in records if r.get("error")]
    if broken:
        raise ValueError(f"the emulator could not describe {len(broken)} call(s), e.g. {broken[0]['operation']}: {broken[0]['error']}")
    if empty:
        raise LookupError(
            f"no AWS call of `vending` was recorded for suite(s) {', '.join(empty)} under {calls_dir}: "
            "run them first (make test-rust test-contract test-scripts), with the emulator recording "
            "(EMULATOR_IAM_CALLS_DIR) and the service signing with iam_calls.SERVICE_ACCESS_KEY_ID"
        )
    return records


# ------------------------------------------------------------------ templates


class Unresolvable(ValueError):
    pass


def materialize(node: Any, values: dict[str, Any]) -> Any:
    """Resolves what the gates' `deployed` leaves (Ref, Fn::Sub, Fn::GetAtt, Fn::Join,
    Fn::Select, Fn::Split) with concrete values; raises on anything else."""
    if isinstance(node, list):
        return [materialize(x, values) for x in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref":
            if arg not in values:
                raise Unresolvable(f"no value for Ref {arg}")
            return values[arg]
        if fn == "Fn::GetAtt":
            name = ".".join(arg) if isinstance(arg, list) else arg
            if name not in values:
                raise Unresolvable(f"no value for GetAtt {name}")
            return values[name]
        if fn == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            local = dict(values)
            local.update({k: materialize(v, values) for k, v in extra.items()})

            def sub(match: re.Match[str]) -> str:
                name = match.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name not in local:
                    raise Unresolvable(f"no value for ${{{name}}} in {text!r}")
                value = local[name]
                return ",".join(value) if isinstance(value, list) else str(value)

            return re.sub(r"\$\{([^}]+)\}", sub, text)
        if fn == "Fn::Join":
            sep, items = arg
            return sep.join(str(x) for x in _flatten(materialize(items, values)))
        if fn == "Fn::Split":
            sep, text = arg
            return str(materialize(text, values)).split(sep)
        if fn == "Fn::Select":
            index, items = arg
            return materialize(items, values)[int(materialize(index, values))]
        if fn.startswith("Fn::") or fn == "Condition":
            raise Unresolvable(f"unsupported {fn}")
    return {k: materialize(v, values) for k, v in node.items()}


def _flatten(items: Any) -> list[Any]:
    return [y for x in items for y in (_flatten(x) if isinstance(x, list) else [x])]


@functools.lru_cache(maxsize=None)
def _sam_source() -> str:
    return json.dumps(load_template(sam.TEMPLATE))


@functools.lru_cache(maxsize=None)
def _ecs_source() -> str:
    return json.dumps(load_template(ecs.ECS_TEMPLATE))


@functools.lru_cache(maxsize=None)
def deployed_template(kind: str, prefix: str, pool_roles: tuple[str, ...], source_text: str | None = None) -> dict:
    """The template as the gates deploy it, with ParameterPrefix and PoolRoleNames set."""
    overrides = {"ParameterPrefix": prefix, "PoolRoleNames": ",".join(pool_roles)}
    if kind == "sam":
        source = json.loads(source_text or _sam_source())
        return sam.deployed(source, dict(sam.SCENARIOS["creates-everything"], **overrides))
    source = json.loads(source_text or _ecs_source())
    return ecs.deployed(source, dict(ecs.SCENARIOS["creates-key-and-role"], **overrides))


ROLES = {
    # kind: (role resource, the name its ARN gets here)
    "sam": "FunctionRole",
    "ecs": "TaskRole",
}


def role_policies(cfn: dict, role: str) -> list[dict[str, Any]]:
    """The role's inline policies and every policy resource attached to it (unresolved)."""
    res = cfn["Resources"]
    p = props(res[role])
    if p.get("ManagedPolicyArns"):
        raise Unresolvable(f"{role} has managed policies, which this check cannot read")
    policies = [{"name": pol["PolicyName"], "policy": pol["PolicyDocument"]} for pol in p.get("Policies", [])]
    for name, other in res.items():
        if other.get("Type") not in ("AWS::IAM::Policy", "AWS::IAM::RolePolicy", "AWS::IAM::ManagedPolicy"):
            continue
        q = props(other)
        attached = as_list(q.get("Roles")) + as_list(q.get("RoleName"))
        if {"Ref": role} in attached:
            policies.append({"name": q.get("PolicyName", name), "policy": q["PolicyDocument"]})
    return policies


def key_policy(cfn: dict) -> dict[str, Any] | None:
    key = cfn["Resources"].get("Key")
    return props(key).get("KeyPolicy") if key else None


def values_for(kind: str, cfn: dict, record: dict[str, Any], table: str, key_arn: str | None) -> dict[str, Any]:
    """Every Ref and GetAtt the roles' policies may name, for this call's account and Region."""
    account, region = record["account"], record["region"]
    values: dict[str, Any] = dict(cfn["_params"])
    for name, declared in (cfn.get("_source") or cfn).get("Parameters", {}).items():
        if declared.get("Type") == "CommaDelimitedList" or str(declared.get("Type", "")).startswith("List<"):
            values[name] = [v for v in str(values.get(name, "")).split(",")]
    role_arn = f"arn:{PARTITION}:iam::{account}:role/{STACK}-{ROLES[kind]}"
    values.update(
        {
            "AWS::Partition": PARTITION,
            "AWS::Region": region,
            "AWS::AccountId": account,
            "AWS::URLSuffix": URL_SUFFIX,
            "AWS::StackName": STACK,
            "Table": table,
            "Table.Arn": f"arn:{PARTITION}:dynamodb:{region}:{account}:table/{table}",
            "Key": key_arn.rsplit("/", 1)[-1] if key_arn else "",
            "Key.Arn": key_arn or f"arn:{PARTITION}:kms:{region}:{account}:key/00000000-0000-0000-0000-000000000000",
            "ManagedInstanceRole": PROVISIONED["role"],
            "ManagedInstanceRole.Arn": f"arn:{PARTITION}:iam::{account}:role/{PROVISIONED['role']}",
            ROLES[kind]: f"{STACK}-{ROLES[kind]}",
            f"{ROLES[kind]}.Arn": role_arn,
            "FunctionLogGroup.Arn": f"arn:{PARTITION}:logs:{region}:{account}:log-group:/aws/lambda/{STACK}:*",
            "LogGroup.Arn": f"arn:{PARTITION}:logs:{region}:{account}:log-group:{STACK}:*",
        }
    )
    return values


# ------------------------------------------------------------------ evaluation


def simulations(records: list[dict[str, Any]], kind: str, source_text: str | None = None) -> list[dict[str, Any]]:
    """One simulator request per recorded IAM request, deduplicated."""
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        prefix = record.get("parameter_prefix") or PROVISIONED["prefix"]
        table = record.get("table") or PROVISIONED["table"]
        pool_roles = tuple(sorted({r for r in record.get("passed_roles", []) if r != PROVISIONED["role"]}))
        cfn = deployed_template(kind, prefix, pool_roles, source_text)
        values = values_for(kind, cfn, record, table, record.get("kms_key_arn"))
        identity = [{"name": p["name"], "policy": materialize(p["policy"], values)} for p in role_policies(cfn, ROLES[kind])]
        own_key = key_policy(cfn)
        for asked in record["requests"]:
            resource_policy = None
            if asked["action"].startswith("kms:") and own_key is not None and asked["resource"] == record.get("kms_key_arn"):
                resource_policy = materialize(own_key, values)
            sim = {
                "principal": values[f"{ROLES[kind]}.Arn"],
                "action": asked["action"],
                "resource": asked["resource"],
                "accountId": record["account"],
                "context": asked["context"],
                "identityPolicies": identity,
                "resourcePolicy": resource_policy,
            }
            ident = json.dumps(sim, sort_keys=True)
            if ident not in out:
                sim["id"] = len(out)
                sim["operation"] = record["operation"]
                sim["suites"] = [record.get("suite", "?")]
                out[ident] = sim
            elif record.get("suite", "?") not in out[ident]["suites"]:
                out[ident]["suites"].append(record.get("suite", "?"))
    return list(out.values())


def simulate(sims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs the batch through tests/iam/simulate.mjs (@cloud-copilot/iam-simulate)."""
    if not (HERE / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir():
        raise RuntimeError(f"{HERE}/node_modules lacks @cloud-copilot/iam-simulate: run tests/template/setup.sh")
    payload = [{k: v for k, v in s.items() if k not in ("operation", "suites")} for s in sims]
    done = subprocess.run(
        ["node", str(HERE / "simulate.mjs")],
        input=json.dumps(payload).encode(),
        capture_output=True,
        cwd=HERE,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"simulate.mjs failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    results = json.loads(done.stdout)
    by_id = {r["id"]: r for r in results}
    return [dict(s, **by_id[s["id"]]) for s in sims]


def denied(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r["decision"] != "Allowed"]


def summary(result: dict[str, Any]) -> str:
    """One line: decision, action, resource, the call and the suites that made it."""
    context = {k: v for k, v in result["context"].items() if k != "aws:RequestedRegion"}
    line = (
        f"{result['decision']}: {result['action']} on {result['resource']} "
        f"(call {result['operation']}, Region {result['context'].get('aws:RequestedRegion')}, suites {','.join(result['suites'])}"
    )
    if context:
        line += f", context {json.dumps(context, sort_keys=True)[:300]}"
    if result.get("errors"):
        line += f", errors {json.dumps(result['errors'])[:400]}"
    return line + ")"


def distinct_lines(results: list[dict[str, Any]]) -> list[str]:
    """Denials grouped by decision, action and operation (resources and keys vary per pool
    and node), with one example each."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for r in results:
        key = (r["decision"], r["action"], r["operation"])
        seen.setdefault(key, r)
        counts[key] = counts.get(key, 0) + 1
    return [f"{counts[k]}x {summary(seen[k])}" for k in sorted(seen)]


def evaluate(records: list[dict[str, Any]], kind: str, source_text: str | None = None) -> list[dict[str, Any]]:
    return simulate(simulations(records, kind, source_text))


def template_at(revision: str, path: str) -> str:
    """A template as committed at `revision`, as the JSON the gates read."""
    from cfn_flip import load_yaml

    text = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, check=True, text=True).stdout
    return json.dumps(json.loads(json.dumps(load_yaml(text))))


def main(argv: list[str]) -> int:
    """check.py [--templates-from REVISION]: prints every denied request, grouped; exit 1
    if any. REVISION evaluates the templates as committed there (e.g. main), the records
    staying this run's."""
    revision = argv[argv.index("--templates-from") + 1] if "--templates-from" in argv else None
    calls_dir = Path(os.environ.get("IAM_CALLS_DIR") or DEFAULT_CALLS_DIR)
    suites = os.environ.get("IAM_REQUIRED_SUITES", " ".join(DEFAULT_SUITES)).split()
    records = load_records(calls_dir, suites)
    failed = 0
    for kind, label in (("sam", "template.yaml FunctionRole"), ("ecs", "deploy/ecs/template.yaml TaskRole")):
        source_text = None
        if revision:
            source_text = template_at(revision, "template.yaml" if kind == "sam" else "deploy/ecs/template.yaml")
            label += f" at {revision}"
        results = evaluate(records, kind, source_text)
        bad = denied(results)
        print(f"{label}: {len(results)} distinct requests from {len(records)} recorded calls, {len(bad)} denied")
        for line in distinct_lines(bad):
            print("  " + line)
        failed += len(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
