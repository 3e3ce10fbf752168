"""CloudFormation helpers the template gates share (test_template_security.py and
test_ecs_template.py): loading a template (and the `source` and `cfn` fixtures made
from it), plain reads of it as a dict, nothing template-specific."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from cfn_flip import load_yaml

# The encryption context Parameter Store gives KMS, and the code parameters the
# stack's key and roles are bound to.
PARAMETER_ARN_CONTEXT = "kms:EncryptionContext:PARAMETER_ARN"
CODE_PARAMETERS = "parameter${ParameterPrefix}/pools/*/activation"


def load_template(path: Path) -> dict:
    """A template as plain dicts, short-form intrinsics (!Ref, !Sub ...) expanded to long form."""
    return json.loads(json.dumps(load_yaml(path.read_text())))


def template_fixtures(path: Path, scenarios: dict, deployed: Callable[[dict, dict], dict]) -> tuple:
    """A gate's two module fixtures: `source`, the template at `path` as loaded, and `cfn`,
    what `deployed` makes of it for each scenario (name: parameter overrides)."""

    @pytest.fixture(scope="module")
    def source() -> dict:
        return load_template(path)

    @pytest.fixture(scope="module", params=list(scenarios))
    def cfn(request, source) -> dict:
        return deployed(source, scenarios[request.param])

    return source, cfn


def parameter_values(source: dict, overrides: dict) -> dict:
    values = {name: str(p.get("Default", "")) for name, p in source.get("Parameters", {}).items()}
    values.update(overrides)
    return values


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def of_type(cfn: dict, type_: str) -> dict:
    return {n: r for n, r in cfn["Resources"].items() if r.get("Type") == type_}


def props(res: dict) -> dict:
    return res.get("Properties", {})


def principal_is_everyone(principal) -> bool:
    return principal == "*" or (isinstance(principal, dict) and "*" in as_list(principal.get("AWS")))


# The stack's Region as a role policy names it (aws:RequestedRegion condition).
STACK_REGION = {"Ref": "AWS::Region"}


def arn_text(resource) -> str:
    """An ARN as written (a !Sub's template, a literal); "" for anything else."""
    import re

    if isinstance(resource, str):
        return resource
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        sub = resource["Fn::Sub"]
        # ${AWS::Partition} and the like hold colons: one placeholder each.
        return re.sub(r"\$\{[^}]*\}", "X", sub if isinstance(sub, str) else sub[0])
    return ""


def region_problems(statements) -> list[str]:
    """Rights in the stack's Region only (issue 18, item 4): every Allow statement requires
    aws:RequestedRegion to be the stack's Region (StringEquals); every Deny names its
    resources in every Region ("*" in the ARN's Region field), so that it does not lean on
    the allows' Region condition. `statements`: (where, statement) pairs."""
    problems = []
    for where, st in statements:
        sid = f"{where}/{st.get('Sid', '?')}"
        if st.get("Effect") == "Allow":
            region = st.get("Condition", {}).get("StringEquals", {}).get("aws:RequestedRegion")
            if region != STACK_REGION:
                problems.append(f"{sid}: allowed in every Region (no StringEquals aws:RequestedRegion: !Ref AWS::Region)")
        elif st.get("Effect") == "Deny":
            for resource in as_list(st.get("Resource")):
                parts = arn_text(resource).split(":")
                if resource != "*" and (len(parts) < 4 or parts[3] != "*"):
                    problems.append(f"{sid}: denies {resource} in one Region only (use * in the ARN's Region)")
    return problems


# Client CIDRs (issue 18, item 8): a prefix of /8 to /32. The widest private block,
# 10.0.0.0/8, is a /8: a wider range necessarily holds public addresses.
CIDRS_REFUSED = ("0.0.0.0/0", "0.0.0.0/1", "0.0.0.0/7", "10.0.0.0/7", "10.0.0.0/33", "10.0.0.0")
CIDRS_ACCEPTED = ("10.0.0.0/8", "10.20.0.0/16", "172.16.0.0/12", "192.168.40.0/24", "10.20.1.1/32")


def cidr_pattern_problems(parameter: dict, name: str) -> list[str]:
    """The parameter's AllowedPattern (CloudFormation applies it to each entry of a
    CommaDelimitedList) refuses every prefix shorter than /8 and accepts /8 to /32."""
    import re

    pattern = parameter.get("AllowedPattern")
    if not pattern:
        return [f"{name} has no AllowedPattern"]
    problems = []
    for cidr in CIDRS_REFUSED:
        if re.fullmatch(pattern, cidr):
            problems.append(f"{name} admits {cidr}")
    for cidr in CIDRS_ACCEPTED:
        if not re.fullmatch(pattern, cidr):
            problems.append(f"{name} refuses {cidr}")
    return problems


def bound_to_code_parameters(st: dict) -> bool:
    """The statement applies only when Parameter Store encrypts or decrypts one of the
    stack's code parameters (PREFIX/pools/*/activation)."""
    cond = st.get("Condition", {})
    value = {**cond.get("StringLike", {}), **cond.get("StringEquals", {})}.get(PARAMETER_ARN_CONTEXT)
    values = as_list(value)
    return bool(values) and all(json.dumps(v).endswith(f':{CODE_PARAMETERS}"}}') for v in values)


# The encryption context of the codes sealed for the pool item (DESIGN §10): the one
# direct use of the stack's key, beside Parameter Store's.
SEALED_CODE_CONTEXT_KEYS = ("activation-vending:deployment", "activation-vending:pool", "activation-vending:activation")
SEALED_CODE_ACTIONS = {"kms:Encrypt", "kms:Decrypt"}


def bound_to_sealed_code_context(st: dict) -> bool:
    """The statement applies only to a direct Encrypt or Decrypt whose encryption context
    has no key but the sealed codes' three (ForAllValues:StringEquals on
    kms:EncryptionContextKeys), names a pool and an activation (Null false) and this
    deployment's table (StringEquals kms:EncryptionContext:activation-vending:deployment)."""
    cond = st.get("Condition", {})
    keys = as_list(cond.get("ForAllValues:StringEquals", {}).get("kms:EncryptionContextKeys"))
    null = cond.get("Null", {})
    deployment = cond.get("StringEquals", {}).get(f"kms:EncryptionContext:{SEALED_CODE_CONTEXT_KEYS[0]}")
    present = all(str(null.get(f"kms:EncryptionContext:{k}", "")).lower() == "false" for k in SEALED_CODE_CONTEXT_KEYS[1:])
    return sorted(keys) == sorted(SEALED_CODE_CONTEXT_KEYS) and present and deployment == {"Ref": "Table"}
