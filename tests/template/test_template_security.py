"""Security properties of template.yaml that a later edit must not silently weaken.

The template is read with its short-form intrinsics (!Ref, !Sub, !GetAtt, !If ...),
expanded by the real SAM translator (the transform CloudFormation runs at deploy) and
then resolved for one set of parameter values, so each check looks at what would
actually be created: the PRIVATE REST API and its resource policy as SAM writes them,
the Lambda permissions SAM adds, the resources a condition keeps or drops.

Two deployments are checked: the default one, where the stack creates the VPC
endpoint, the KMS key and the managed-instance role, and one that brings all three.
Every check returns a list of problems; the mutation tests at the end apply one
weakening edit each to a copy of the template and assert that its check objects,
which proves the checks can fail.

Run: .venv-tools/bin/python -m pytest tests/template/test_template_security.py
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import os
import re
from pathlib import Path

import pytest

from cfn_helpers import (
    PARAMETER_ARN_CONTEXT,
    SEALED_CODE_ACTIONS,
    as_list,
    bound_to_code_parameters,
    bound_to_sealed_code_context,
    cidr_pattern_problems,
    of_type,
    parameter_values,
    principal_is_everyone,
    props,
    region_problems,
    template_fixtures,
)

os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
logging.getLogger("samtranslator").setLevel(logging.ERROR)

from samtranslator.translator.transform import transform  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# The only actions the function may hold on Resource "*": SSM activations have no
# resource type in IAM, CreateActivation with Tags needs AddTagsToResource, and
# DescribeInstanceInformation has no resource type either.
WILDCARD_RESOURCE_ACTIONS = {
    "ssm:CreateActivation",
    "ssm:DescribeActivations",
    "ssm:DeleteActivation",
    "ssm:AddTagsToResource",
    "ssm:DescribeInstanceInformation",
    "ssm:DescribeParameters",
}
# The tag key every activation the service makes carries (POOL_TAG in lambda/src/pool/settings.rs);
# SSM copies it onto every node registered with it.
POOL_TAG_KEY = "activation-vending:pool"
# Every action the service calls (lambda/src/aws/*.rs): a check that the role still grants
# each, so a tightening cannot silently break vends, the sweep or the clean-up.
REQUIRED_ACTIONS = {
    "ssm:CreateActivation",
    "ssm:DescribeActivations",
    "ssm:DeleteActivation",
    "ssm:AddTagsToResource",
    "ssm:DescribeInstanceInformation",
    "ssm:DeregisterManagedInstance",
    "ssm:GetParametersByPath",
    "ssm:GetParameter",
    "ssm:PutParameter",
    "ssm:DescribeParameters",
    "kms:DescribeKey",
    "dynamodb:GetItem",
    "dynamodb:UpdateItem",
    "dynamodb:PutItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Scan",
    "dynamodb:DeleteItem",
    "iam:PassRole",
}
# SSM resources that exist before the function tags anything: it must never tag them (the
# pool tag on a foreign node would let it deregister that node).
EXISTING_TAGGABLE = ("parameter/*", "document/*")
# The managed nodes are the one exception (a registration's confirmation, issue 22): only
# this deployment's nodes (DEPLOYMENT_TAG = the table), only these keys (NAME_TAG and
# MACHINE_TAG in lambda/src/pool/settings.rs), never an untagging.
DEPLOYMENT_TAG_KEY = "activation-vending:deployment"
NODE_TAG_KEYS = ["Name", "activation-vending:machine-id"]
NODE_ARN = ":managed-instance/*"
# AWS-managed policies the template may attach, and to which role only.
ALLOWED_MANAGED_POLICIES = {
    "ManagedInstanceRole": {"AmazonSSMManagedInstanceCore"},
    "ApiGatewayLogsRole": {"service-role/AmazonAPIGatewayPushToCloudWatchLogs"},
}
KMS_USE_ACTIONS = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKeyPair",
    "kms:CreateGrant",
]
REQUIRED_ENV = {
    "VENDING_TABLE",
    "VENDING_PARAMETER_PREFIX",
    "VENDING_KMS_KEY_ID",
    "VENDING_INSTANCE_ROLE",
    "VENDING_REGISTRATION_LIMIT",
    "VENDING_ACTIVATION_TTL",
    "VENDING_EXPIRY_MARGIN",
    "VENDING_LEASE",
    "VENDING_DEADLINE",
    "VENDING_NODE_QUOTA",
    "VENDING_DEFAULT_ALLOWED_CIDRS",
    "VENDING_POOL_CONFIG_WRITERS",
    "AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH",
}
# Parameter Store's encryption context on every use of the codes' key, and the one value
# the key may be used for: the stack's code parameters.
# API Gateway gives up on an integration after 29 s and answers 504 (not JSON).
API_GATEWAY_INTEGRATION_TIMEOUT_SECS = 29
# Condition keys API Gateway is not documented to send when it assumes the account's
# CloudWatch Logs role; a trust condition on them can fail the first deploy.
UNSENT_TRUST_KEYS = ("aws:SourceAccount", "aws:SourceArn", "aws:SourceOrgID")

# The service's metrics (lambda/src/metrics.rs), written as CloudWatch embedded-metric-format
# lines: each with the dimension Pool, and ManagedNodes also account-wide with no dimension.
METRIC_NAMESPACE = "ActivationVending"
POOL_METRICS = (
    "Vends",
    "Rotations",
    "RotationFailures",
    "NoActivationYet",
    "Forbidden",
    "SlotsRemaining",
    "SweepDeleted",
    "SweepFailures",
    "StaleNodesDeregistered",
    "ManagedNodes",
)
# Alarms that must fire on a single failure in any pool, present or future.
FAILURE_ALARM_METRICS = ("RotationFailures", "SweepFailures", "PoolConfigUntrusted")
# Standard-tier hybrid nodes per account and Region; past it, the paid advanced tier.
STANDARD_TIER_NODES = 1000
ALARM_TOPIC = "arn:aws:sns:eu-west-1:123456789012:vending-alarms"

EXISTING_VPCE = "vpce-0aaaabbbbccccdddd"
SCENARIOS = {
    "creates-everything": {
        "VpcId": "vpc-0123456789abcdef0",
        "SubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
        "ClientCidr": "10.20.0.0/16",
    },
    "brings-endpoint-key-role": {
        "ExistingVpcEndpointId": EXISTING_VPCE,
        "ExistingKmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "ExistingInstanceRoleName": "OnPremServers",
    },
    # Pools with roles of their own, and the API closed to all but two server ranges.
    "pools-and-source-ranges": {
        "VpcId": "vpc-0123456789abcdef0",
        "SubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
        "ClientCidr": "10.20.0.0/16",
        "PoolRoleNames": "web-servers,db-servers,windows-servers",
        "AllowedSourceCidrs": "10.20.1.0/24,10.20.2.0/24",
        "AlarmTopicArn": ALARM_TOPIC,
    },
    "ten-pool-roles": {
        "ExistingVpcEndpointId": EXISTING_VPCE,
        "ExistingInstanceRoleName": "OnPremServers",
        "PoolRoleNames": ",".join(f"role-{i}" for i in range(10)),
    },
}

NOVALUE = object()


# ------------------------------------------------------------------ loading


class _NoManagedPolicies:
    """The function uses an explicit Role, so SAM never needs to look up a policy ARN."""

    def load(self):
        return {}


def translate(source: dict, params: dict) -> dict:
    """Runs the SAM transform, as CloudFormation would at deploy time (CloudFormation hands
    a macro a CommaDelimitedList parameter's value as a list)."""
    doc = copy.deepcopy(source)
    for res in doc["Resources"].values():
        if res.get("Type") == "AWS::Serverless::Function":
            res["Properties"]["CodeUri"] = "s3://bucket/key"  # what `sam deploy` uploads
    values = {
        name: value.split(",") if source.get("Parameters", {}).get(name, {}).get("Type") == "CommaDelimitedList" else value
        for name, value in params.items()
    }
    return transform(doc, values, _NoManagedPolicies())


def _condition(expr, params, conds, template):
    if isinstance(expr, dict) and len(expr) == 1:
        (fn, arg), = expr.items()
        if fn == "Condition":
            return _condition(template["Conditions"][arg], params, conds, template)
        if fn == "Fn::Equals":
            a, b = (resolve(x, params, conds, template) for x in arg)
            return str(a) == str(b)
        if fn == "Fn::Not":
            return not _condition(arg[0], params, conds, template)
        if fn == "Fn::And":
            return all(_condition(x, params, conds, template) for x in arg)
        if fn == "Fn::Or":
            return any(_condition(x, params, conds, template) for x in arg)
    raise ValueError(f"unsupported condition {expr!r}")


def _evaluate(fn, arg):
    """Fn::Join, Fn::Split and Fn::Select on values already known; None otherwise."""
    if fn == "Fn::Join" and isinstance(arg[0], str) and isinstance(arg[1], list) and all(isinstance(v, str) for v in arg[1]):
        return arg[0].join(arg[1])
    if fn == "Fn::Split" and isinstance(arg[0], str) and isinstance(arg[1], str):
        return arg[1].split(arg[0])
    if fn == "Fn::Select" and isinstance(arg[1], list) and all(isinstance(v, str) for v in arg[1]):
        return arg[1][int(arg[0])]
    return None


def resolve(node, params, conds, template):
    """Resolves Fn::If, Ref to parameters, and Fn::Join/Split/Select on known values;
    leaves resource refs, !Sub and !GetAtt."""
    if isinstance(node, dict):
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Fn::If":
                name, yes, no = arg
                return resolve(yes if conds[name] else no, params, conds, template)
            if fn == "Ref" and arg == "AWS::NoValue":
                return NOVALUE
            if fn == "Ref" and arg in params:
                declared = template.get("Parameters", {}).get(arg, {})
                if declared.get("Type") == "CommaDelimitedList":
                    return params[arg].split(",")
                return params[arg]
        out = {}
        for key, value in node.items():
            value = resolve(value, params, conds, template)
            if value is not NOVALUE:
                out[key] = value
        if len(out) == 1 and next(iter(out)) in ("Fn::Join", "Fn::Split", "Fn::Select"):
            (fn, arg), = out.items()
            known = _evaluate(fn, arg) if isinstance(arg, list) and len(arg) == 2 else None
            if known is not None:
                return known
        return out
    if isinstance(node, list):
        return [v for v in (resolve(x, params, conds, template) for x in node) if v is not NOVALUE]
    return node


def deployed(source: dict, overrides: dict) -> dict:
    """The CloudFormation template that would be deployed with these parameters."""
    params = parameter_values(source, overrides)
    cfn = translate(source, params)
    conds: dict = {}
    for name, expr in cfn.get("Conditions", {}).items():
        conds[name] = _condition(expr, params, conds, cfn)
    kept = {
        name: res
        for name, res in cfn["Resources"].items()
        if "Condition" not in res or conds[res["Condition"]]
    }
    cfn["Resources"] = resolve(kept, params, conds, cfn)
    cfn["_params"] = params
    return cfn


# ------------------------------------------------------------------ helpers


def endpoint_ref(cfn: dict):
    """What the API must be pinned to: the created endpoint, or the one given."""
    if "VpcEndpoint" in cfn["Resources"]:
        return {"Ref": "VpcEndpoint"}
    return cfn["_params"]["ExistingVpcEndpointId"]


def identity_statements(cfn: dict):
    """(resource name, statement) for every statement of an identity-based policy."""
    for name, res in cfn["Resources"].items():
        p = props(res)
        docs = []
        if res["Type"] == "AWS::IAM::Role":
            docs = [pol.get("PolicyDocument", {}) for pol in p.get("Policies", [])]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::RolePolicy", "AWS::IAM::ManagedPolicy"):
            docs = [p.get("PolicyDocument", {})]
        for doc in docs:
            for st in as_list(doc.get("Statement")):
                yield name, st


def api_policy(api: dict) -> dict:
    p = props(api)
    return p.get("Policy") or p.get("Body", {}).get("x-amazon-apigateway-policy") or {}


# ------------------------------------------------------------------ checks


def check_private_api(cfn: dict) -> list[str]:
    problems = []
    apis = of_type(cfn, "AWS::ApiGateway::RestApi")
    if list(apis) != ["Api"]:
        problems.append(f"expected exactly the one REST API `Api`, found {sorted(apis)} (an Api event without RestApiId adds a public implicit API)")
    for other in ("AWS::ApiGatewayV2::Api", "AWS::Lambda::Url", "AWS::ElasticLoadBalancingV2::LoadBalancer"):
        if of_type(cfn, other):
            problems.append(f"{other} opens another way in")
    for name, api in apis.items():
        conf = props(api).get("EndpointConfiguration", {})
        if conf.get("Types") != ["PRIVATE"]:
            problems.append(f"{name}: endpoint type is {conf.get('Types')}, not PRIVATE")
        if conf.get("VpcEndpointIds") != [endpoint_ref(cfn)]:
            problems.append(f"{name}: VpcEndpointIds {conf.get('VpcEndpointIds')} is not the stack's endpoint")
    for name, perm in of_type(cfn, "AWS::Lambda::Permission").items():
        p = props(perm)
        if p.get("Principal") == "apigateway.amazonaws.com" and '"Api"' not in json.dumps(p.get("SourceArn")):
            problems.append(f"{name}: lets API Gateway invoke the function from an API other than `Api`")
    return problems


def check_resource_policy(cfn: dict) -> list[str]:
    problems = []
    api = cfn["Resources"].get("Api")
    if api is None:
        return ["no Api resource"]
    statements = as_list(api_policy(api).get("Statement"))
    want = {"StringNotEquals": {"aws:SourceVpce": endpoint_ref(cfn)}}
    denies = [
        st
        for st in statements
        if st.get("Effect") == "Deny"
        and principal_is_everyone(st.get("Principal"))
        and set(as_list(st.get("Action"))) & {"execute-api:Invoke", "execute-api:*", "*"}
        and "execute-api:/*" in as_list(st.get("Resource"))
        and st.get("Condition") == want
    ]
    if not denies:
        problems.append(f"no statement denies execute-api:Invoke on execute-api:/* to every caller whose aws:SourceVpce is not {endpoint_ref(cfn)}")
    if not any(st.get("Effect") == "Allow" for st in statements):
        problems.append("the resource policy allows nothing: the API would refuse every caller")
    cidrs = [c for c in cfn["_params"].get("AllowedSourceCidrs", "").split(",") if c]
    source_denies = [st for st in statements if "aws:VpcSourceIp" in json.dumps(st.get("Condition", {}))]
    if cidrs:
        want_ip = {"NotIpAddress": {"aws:VpcSourceIp": cidrs}}
        if not any(
            st.get("Effect") == "Deny"
            and principal_is_everyone(st.get("Principal"))
            and set(as_list(st.get("Action"))) & {"execute-api:Invoke", "execute-api:*", "*"}
            and "execute-api:/*" in as_list(st.get("Resource"))
            and st.get("Condition") == want_ip
            for st in source_denies
        ):
            problems.append(f"AllowedSourceCidrs is {cidrs} but no statement denies execute-api:Invoke on execute-api:/* to every aws:VpcSourceIp outside them")
    elif source_denies:
        problems.append("AllowedSourceCidrs is empty (no restriction) but the policy still conditions on aws:VpcSourceIp")
    for st in statements:
        if "NotPrincipal" in st or "NotAction" in st or "NotResource" in st:
            problems.append(f"statement {st.get('Sid')} uses a Not* element")
    return problems


def check_endpoint(cfn: dict) -> list[str]:
    problems = []
    res = cfn["Resources"]
    if "VpcEndpoint" not in res:
        return problems  # an existing endpoint is the operator's
    ep = props(res["VpcEndpoint"])
    if ep.get("VpcEndpointType") != "Interface" or "execute-api" not in json.dumps(ep.get("ServiceName")):
        problems.append("VpcEndpoint is not an execute-api interface endpoint")
    if str(ep.get("PrivateDnsEnabled")).lower() != "false":
        problems.append(
            "VpcEndpoint has private DNS on by default: it fails in VPCs without DNS hostnames and sends"
            " every execute-api name in the VPC to this endpoint; the boot lines need no private DNS"
        )
    if ep.get("SecurityGroupIds") != [{"Ref": "EndpointSecurityGroup"}]:
        problems.append("VpcEndpoint is not guarded by EndpointSecurityGroup")
    sg = props(res.get("EndpointSecurityGroup", {}))
    ingress = sg.get("SecurityGroupIngress", [])
    want = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": cfn["_params"]["ClientCidr"]}
    if [{k: r.get(k) for k in want} for r in ingress] != [want]:
        problems.append(f"security group ingress is {ingress}, not TCP 443 from ClientCidr only")
    for name, rule in of_type(cfn, "AWS::EC2::SecurityGroupIngress").items():
        problems.append(f"{name}: extra ingress rule {props(rule)}")
    for rule in ingress + sg.get("SecurityGroupEgress", []):
        if rule.get("CidrIp") == "0.0.0.0/0" or rule.get("CidrIpv6") == "::/0":
            problems.append(f"security group rule open to the world: {rule}")
    return problems


def check_client_cidr_rule(source: dict) -> list[str]:
    for rule in source.get("Rules", {}).values():
        for assertion in rule.get("Assertions", []):
            if assertion.get("Assert") == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ClientCidr"}, "0.0.0.0/0"]}]}:
                return []
    return ["no rule refuses ClientCidr 0.0.0.0/0"]


def check_client_cidr_prefix_bound(source: dict) -> list[str]:
    return cidr_pattern_problems(source["Parameters"]["ClientCidr"], "ClientCidr")


def check_region_bound(cfn: dict) -> list[str]:
    """The function's rights hold in the stack's Region only (issue 18, item 4)."""
    return region_problems((name, st) for name, st in identity_statements(cfn) if name in ("FunctionRole", "FunctionKeyPolicy"))


def check_stage(cfn: dict) -> list[str]:
    problems = []
    stages = of_type(cfn, "AWS::ApiGateway::Stage")
    if not stages:
        return ["no API stage"]
    for name, stage in stages.items():
        p = props(stage)
        settings = p.get("MethodSettings", [])
        if not any(s.get("ThrottlingRateLimit") and s.get("ThrottlingBurstLimit") and s.get("ResourcePath") == "/*" for s in settings):
            problems.append(f"{name}: no stage-wide throttling")
        if any(s.get("DataTraceEnabled") not in (False, "false") for s in settings) or not settings:
            problems.append(f"{name}: DataTraceEnabled is not explicitly false (it would log activation codes)")
        if not p.get("AccessLogSetting", {}).get("DestinationArn"):
            problems.append(f"{name}: no access logging")
        if p.get("CacheClusterEnabled") in (True, "true"):
            problems.append(f"{name}: caching would hand one activation to many servers")
    for name, group in of_type(cfn, "AWS::Logs::LogGroup").items():
        if not props(group).get("RetentionInDays"):
            problems.append(f"{name}: log group without retention")
    return problems


def check_table(cfn: dict) -> list[str]:
    problems = []
    tables = of_type(cfn, "AWS::DynamoDB::Table")
    if list(tables) != ["Table"]:
        return [f"expected the one table `Table`, found {sorted(tables)}"]
    p = props(tables["Table"])
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        problems.append("table is not on-demand")
    if p.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") not in (True, "true"):
        problems.append("table has no point-in-time recovery")
    if p.get("SSESpecification", {}).get("SSEEnabled") not in (True, "true"):
        problems.append("table has no KMS server-side encryption")
    ttl = p.get("TimeToLiveSpecification", {})
    if ttl.get("AttributeName") != "ttl" or ttl.get("Enabled") not in (True, "true"):
        problems.append("table has no TTL on `ttl`")
    if p.get("KeySchema") != [{"AttributeName": "pk", "KeyType": "HASH"}]:
        problems.append("table key is not `pk` alone")
    return problems


def check_key(cfn: dict) -> list[str]:
    problems = []
    res = cfn["Resources"]
    if "Key" not in res:
        return problems  # an existing key is the operator's
    p = props(res["Key"])
    if p.get("EnableKeyRotation") not in (True, "true"):
        problems.append("KMS key rotation is off")
    if not any(props(a).get("TargetKeyId") == {"Ref": "Key"} for a in of_type(cfn, "AWS::KMS::Alias").values()):
        problems.append("KMS key has no alias")
    for st in as_list(p.get("KeyPolicy", {}).get("Statement")):
        if st.get("Effect") != "Allow":
            continue
        if principal_is_everyone(st.get("Principal")):
            problems.append(f"key policy statement {st.get('Sid')} allows everyone")
        actions = as_list(st.get("Action"))
        uses = [a for a in KMS_USE_ACTIONS if any(fnmatch.fnmatchcase(a, pat) for pat in actions + as_list(st.get("NotAction")))]
        if not uses:
            continue
        if st.get("Principal") != {"AWS": {"Fn::GetAtt": ["FunctionRole", "Arn"]}}:
            problems.append(f"key policy statement {st.get('Sid')} lets {st.get('Principal')} use the key ({uses})")
        if bound_to_sealed_code_context(st):
            # The sealed codes on the pool item: Encrypt and Decrypt called directly.
            if set(uses) - SEALED_CODE_ACTIONS:
                problems.append(f"key policy statement {st.get('Sid')} allows more than Encrypt/Decrypt on sealed codes: {uses}")
            continue
        via = st.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
        if not via or not json.dumps(via).startswith('{"Fn::Sub": "ssm.'):
            problems.append(f"key policy statement {st.get('Sid')} allows use outside Parameter Store")
        if set(uses) - {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"}:
            problems.append(f"key policy statement {st.get('Sid')} allows more than Encrypt/Decrypt/GenerateDataKey: {uses}")
        if not bound_to_code_parameters(st):
            problems.append(f"key policy statement {st.get('Sid')} is not bound to the stack's code parameters ({PARAMETER_ARN_CONTEXT})")
    return problems


def check_instance_role(cfn: dict) -> list[str]:
    problems = []
    res = cfn["Resources"]
    if "ManagedInstanceRole" not in res:
        return problems
    p = props(res["ManagedInstanceRole"])
    managed = [json.dumps(a) for a in p.get("ManagedPolicyArns", [])]
    if len(managed) != 1 or "policy/AmazonSSMManagedInstanceCore" not in managed[0]:
        problems.append(f"managed-instance role policies are {managed}, not AmazonSSMManagedInstanceCore alone")
    if p.get("Policies"):
        problems.append("managed-instance role has inline policies")
    trust = as_list(p.get("AssumeRolePolicyDocument", {}).get("Statement"))
    if len(trust) != 1:
        problems.append("managed-instance role trust must be one statement")
    for st in trust:
        if st.get("Principal") != {"Service": "ssm.amazonaws.com"}:
            problems.append(f"managed-instance role is trusted by {st.get('Principal')}")
        cond = st.get("Condition", {})
        if cond.get("StringEquals", {}).get("aws:SourceAccount") != {"Ref": "AWS::AccountId"}:
            problems.append("managed-instance role trust is not limited by aws:SourceAccount")
        source_arn = cond.get("ArnLike", {}).get("aws:SourceArn") or cond.get("ArnEquals", {}).get("aws:SourceArn")
        if "${AWS::AccountId}" not in json.dumps(source_arn):
            problems.append("managed-instance role trust is not limited by aws:SourceArn to this account's SSM")
    return problems


def check_api_logs_role(cfn: dict) -> list[str]:
    """API Gateway's CloudWatch Logs role: trusted by apigateway.amazonaws.com as AWS's own
    example has it, with no condition on keys API Gateway does not send."""
    problems = []
    res = cfn["Resources"]
    if "ApiGatewayLogsRole" not in res:
        return problems
    p = props(res["ApiGatewayLogsRole"])
    trust = as_list(p.get("AssumeRolePolicyDocument", {}).get("Statement"))
    if len(trust) != 1:
        problems.append("API Gateway logs role trust must be one statement")
    for st in trust:
        if st.get("Effect") != "Allow" or st.get("Principal") != {"Service": "apigateway.amazonaws.com"}:
            problems.append(f"API Gateway logs role is trusted by {st.get('Principal')}")
        if as_list(st.get("Action")) != ["sts:AssumeRole"]:
            problems.append(f"API Gateway logs role trust allows {st.get('Action')}")
        text = json.dumps(st.get("Condition", {}))
        for key in UNSENT_TRUST_KEYS:
            if f'"{key}"' in text:
                problems.append(f"API Gateway logs role trust is conditioned on {key}, which API Gateway does not send")
    managed = [json.dumps(a) for a in p.get("ManagedPolicyArns", [])]
    if len(managed) != 1 or "AmazonAPIGatewayPushToCloudWatchLogs" not in managed[0]:
        problems.append(f"API Gateway logs role policies are {managed}")
    return problems


def check_least_privilege(cfn: dict) -> list[str]:
    problems = []
    prefix = "parameter${ParameterPrefix}/pools"
    for name, st in identity_statements(cfn):
        if st.get("Effect") != "Allow":
            continue
        sid = f"{name}/{st.get('Sid', '?')}"
        if "NotAction" in st or "NotResource" in st:
            problems.append(f"{sid}: NotAction/NotResource grants everything else")
            continue
        actions = as_list(st.get("Action"))
        resources = as_list(st.get("Resource"))
        for action in actions:
            if "*" in action:
                problems.append(f"{sid}: wildcard action {action}")
        if not resources:
            problems.append(f"{sid}: no Resource")
        if any(r == "*" or (isinstance(r, str) and r.startswith("arn:") and r.split(":")[2:5] == ["*"] * 3) for r in resources):
            extra = set(actions) - WILDCARD_RESOURCE_ACTIONS
            if extra:
                problems.append(f"{sid}: {sorted(extra)} on Resource '*' (only {sorted(WILDCARD_RESOURCE_ACTIONS)} admit no resource)")
            for tagging in ("ssm:AddTagsToResource", "ssm:CreateActivation"):
                if tagging in actions and not requires_request_tag(st, POOL_TAG_KEY):
                    problems.append(f"{sid}: {tagging} on '*' without requiring the {POOL_TAG_KEY} tag in the request")
        for action in actions:
            if action == "ssm:DeregisterManagedInstance":
                if not resources or not all(json.dumps(r).endswith(':managed-instance/*"}') for r in resources):
                    problems.append(f"{sid}: {action} on {resources}, not managed-instance/* alone")
                if not requires_resource_tag(st, POOL_TAG_KEY):
                    problems.append(f"{sid}: {action} not conditioned on the node's {POOL_TAG_KEY} tag (ssm:resourceTag)")
                continue
            if action == "ssm:PutParameter" and not all(json.dumps(r).endswith('/pools/*/activation"}') for r in resources):
                problems.append(f"{sid}: {action} on {resources}: the function writes the codes (pools/*/activation), never a pool's config")
            if action == "ssm:GetParametersByPath" and not all(
                json.dumps(r).endswith(('parameter${ParameterPrefix}/pools"}', 'parameter${ParameterPrefix}/pools/*"}')) for r in resources
            ):
                problems.append(f"{sid}: {action} on {resources}, not the pools path")
            if action.startswith("ssm:") and action not in WILDCARD_RESOURCE_ACTIONS:
                if not resources or not all(prefix in json.dumps(r) for r in resources):
                    problems.append(f"{sid}: {action} reaches beyond {prefix}")
            if action.startswith("kms:"):
                if action in SEALED_CODE_ACTIONS and bound_to_sealed_code_context(st):
                    pass  # the sealed codes on the pool item (cfn_helpers.bound_to_sealed_code_context)
                elif action != "kms:DescribeKey":
                    via = st.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
                    if not via or "ssm." not in json.dumps(via):
                        problems.append(f"{sid}: {action} without kms:ViaService ssm")
                    if not bound_to_code_parameters(st):
                        problems.append(f"{sid}: {action} not bound to the stack's code parameters ({PARAMETER_ARN_CONTEXT})")
                if resources == ["*"] or any("*" in json.dumps(r) for r in resources):
                    problems.append(f"{sid}: {action} on every key")
            if action.startswith("dynamodb:") and resources != [{"Fn::GetAtt": ["Table", "Arn"]}]:
                problems.append(f"{sid}: {action} on {resources}, not the table")
            if action == "iam:PassRole":
                cond = st.get("Condition", {}).get("StringEquals", {})
                if cond.get("iam:PassedToService") != "ssm.amazonaws.com":
                    problems.append(f"{sid}: iam:PassRole without iam:PassedToService ssm.amazonaws.com")
                passed = {role_of(r, cfn) for r in resources}
                pool_roles = {r for r in cfn["_params"].get("PoolRoleNames", "").split(",") if r}
                if None in passed or any("*" in r for r in passed if r) or passed != {INSTANCE_ROLE} | pool_roles:
                    problems.append(
                        f"{sid}: iam:PassRole on {sorted(map(str, passed))}, not the managed-instance role and PoolRoleNames {sorted(pool_roles)} alone"
                    )
    denied = [
        json.dumps(r)
        for _, st in identity_statements(cfn)
        if st.get("Effect") == "Deny" and "ssm:AddTagsToResource" in as_list(st.get("Action")) and not st.get("Condition")
        for r in as_list(st.get("Resource"))
    ]
    for kind in EXISTING_TAGGABLE:
        if not any(f':{kind}"' in r for r in denied):
            problems.append(f"no statement denies ssm:AddTagsToResource on existing {kind} (the pool tag would reach nodes and parameters the function did not make)")
    problems += node_tagging_problems(cfn)
    granted = {a for _, st in identity_statements(cfn) if st.get("Effect") == "Allow" for a in as_list(st.get("Action"))}
    missing = REQUIRED_ACTIONS - granted
    if missing:
        problems.append(f"the function role lacks {sorted(missing)}, which the service calls")
    for name, role in of_type(cfn, "AWS::IAM::Role").items():
        p = props(role)
        for arn in p.get("ManagedPolicyArns", []):
            text = json.dumps(arn)
            allowed = ALLOWED_MANAGED_POLICIES.get(name, set())
            if not any(f':policy/{a}"' in text for a in allowed):
                problems.append(f"{name}: managed policy {text} is not allowed on this role")
        for st in as_list(p.get("AssumeRolePolicyDocument", {}).get("Statement")):
            principal = st.get("Principal", {})
            if principal_is_everyone(principal) or not isinstance(principal, dict) or set(principal) != {"Service"}:
                problems.append(f"{name}: trusted by {principal}, not one AWS service")
    functions = of_type(cfn, "AWS::Lambda::Function")
    for name, fn in functions.items():
        if props(fn).get("Role") != {"Fn::GetAtt": ["FunctionRole", "Arn"]}:
            problems.append(f"{name}: does not run as FunctionRole")
    return problems


def node_tagging_problems(cfn: dict) -> list[str]:
    """Tagging a managed node: denied unless the node carries this deployment's tag and the
    request's keys are Name and the machine-id tag only; untagging one is always denied;
    every allow of it on nodes says the same."""
    problems = []
    this_table = {"Ref": "Table"}
    denies = [
        st
        for _, st in identity_statements(cfn)
        if st.get("Effect") == "Deny" and any(json.dumps(r).endswith(f'{NODE_ARN}"}}') for r in as_list(st.get("Resource")))
    ]

    def denied(action: str, condition: dict | None) -> bool:
        return any(action in as_list(st.get("Action")) and st.get("Condition") == condition for st in denies)

    if not denied("ssm:RemoveTagsFromResource", None):
        problems.append("no statement denies ssm:RemoveTagsFromResource on every managed node")
    if not denied("ssm:AddTagsToResource", {"StringNotEquals": {f"aws:ResourceTag/{DEPLOYMENT_TAG_KEY}": this_table}}):
        problems.append(f"no statement denies ssm:AddTagsToResource on a node without this deployment's {DEPLOYMENT_TAG_KEY} tag")
    if not denied("ssm:AddTagsToResource", {"ForAnyValue:StringNotEquals": {"aws:TagKeys": NODE_TAG_KEYS}}):
        problems.append(f"no statement denies ssm:AddTagsToResource on a node with keys other than {NODE_TAG_KEYS}")
    for name, st in identity_statements(cfn):
        if st.get("Effect") != "Allow" or "ssm:AddTagsToResource" not in as_list(st.get("Action")):
            continue
        if not any(NODE_ARN in json.dumps(r) for r in as_list(st.get("Resource"))):
            continue
        cond = st.get("Condition", {})
        if cond.get("StringEquals", {}).get(f"aws:ResourceTag/{DEPLOYMENT_TAG_KEY}") != this_table:
            problems.append(f"{name}/{st.get('Sid')}: tags nodes without this deployment's tag")
        keys = as_list(cond.get("ForAllValues:StringEquals", {}).get("aws:TagKeys"))
        if not keys or not set(keys) <= set(NODE_TAG_KEYS) or str(cond.get("Null", {}).get("aws:TagKeys")).lower() != "false":
            problems.append(f"{name}/{st.get('Sid')}: tags nodes with keys other than {NODE_TAG_KEYS}")
    return problems


INSTANCE_ROLE = "<managed-instance role>"


def role_of(resource, cfn: dict):
    """The role NAME an iam:PassRole resource names, INSTANCE_ROLE for the managed-instance
    role, None for anything that is not one role of this account."""
    if resource == {"Fn::GetAtt": ["ManagedInstanceRole", "Arn"]} and "ManagedInstanceRole" in cfn["Resources"]:
        return INSTANCE_ROLE
    prefix = "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/"
    if resource == {"Fn::Sub": prefix + "${ExistingInstanceRoleName}"} and "ManagedInstanceRole" not in cfn["Resources"]:
        return INSTANCE_ROLE
    sub = resource.get("Fn::Sub") if isinstance(resource, dict) else None
    if isinstance(sub, list) and len(sub) == 2 and sub[0] == prefix + "${Role}" and isinstance(sub[1].get("Role"), str):
        name = sub[1]["Role"]
        return INSTANCE_ROLE if name == cfn["_params"].get("ExistingInstanceRoleName") and name else name
    return None


def requires_request_tag(st: dict, key: str) -> bool:
    """The statement applies only to requests that carry tag `key`."""
    cond = st.get("Condition", {})
    null = cond.get("Null", {}).get(f"aws:RequestTag/{key}")
    like = {**cond.get("StringLike", {}), **cond.get("StringEquals", {})}.get(f"aws:RequestTag/{key}")
    return str(null).lower() == "false" or (like is not None and "" not in as_list(like))


def requires_resource_tag(st: dict, key: str) -> bool:
    """The statement applies only to resources that carry tag `key`."""
    cond = st.get("Condition", {})
    for name in (f"ssm:resourceTag/{key}", f"aws:ResourceTag/{key}"):
        if str(cond.get("Null", {}).get(name)).lower() == "false":
            return True
        like = {**cond.get("StringLike", {}), **cond.get("StringEquals", {})}.get(name)
        if like is not None and "" not in as_list(like):
            return True
    return False


def check_function(source: dict) -> list[str]:
    problems = []
    fns = {n: r for n, r in source["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    if list(fns) != ["Function"]:
        return [f"expected the one function `Function`, found {sorted(fns)}"]
    fn = fns["Function"]
    p = props(fn)
    if p.get("Runtime") != "provided.al2023":
        problems.append("runtime is not provided.al2023")
    arch = p.get("Architectures")
    if arch != [{"Ref": "Architecture"}] or source["Parameters"]["Architecture"].get("Default") != "arm64":
        problems.append(f"architecture {arch} does not default to arm64")
    if fn.get("Metadata", {}).get("BuildMethod") != "rust-cargolambda":
        problems.append("BuildMethod is not rust-cargolambda")
    if "FunctionUrlConfig" in p or "Policies" in p:
        problems.append("function has a Function URL or SAM Policies (use FunctionRole)")
    missing = REQUIRED_ENV - set(p.get("Environment", {}).get("Variables", {}))
    if missing:
        problems.append(f"environment lacks {sorted(missing)}")
    routes = set()
    for ename, event in p.get("Events", {}).items():
        ep = event.get("Properties", {})
        if event["Type"] in ("HttpApi", "FunctionUrl"):
            problems.append(f"event {ename}: {event['Type']} is not the private REST API")
        if event["Type"] == "Api":
            if ep.get("RestApiId") != {"Ref": "Api"}:
                problems.append(f"event {ename}: Api event outside the private API (implicit public API)")
            routes.add((ep.get("Method", "").lower(), ep.get("Path")))
    for route in [("get", "/"), ("get", "/activation"), ("get", "/health")]:
        if route not in routes:
            problems.append(f"route {route[0].upper()} {route[1]} missing")
    return problems


def duration_secs(text) -> float:
    """`20s`, `500ms`, `1m30s` (the service's duration syntax) in seconds."""
    import re

    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = str(text).strip()
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def check_trust_settings(source: dict) -> list[str]:
    """The implicit default pool admits AllowedSourceCidrs alone, and the service trusts
    the pool configs PoolConfigWriters wrote (both lists, empty by default)."""
    problems = []
    env = props(source["Resources"]["Function"]).get("Environment", {}).get("Variables", {})
    for variable, parameter in (
        ("VENDING_DEFAULT_ALLOWED_CIDRS", "AllowedSourceCidrs"),
        ("VENDING_POOL_CONFIG_WRITERS", "PoolConfigWriters"),
    ):
        want = {"Fn::Join": [",", {"Ref": parameter}]}
        if env.get(variable) != want:
            problems.append(f"{variable} is {env.get(variable)!r}, not {want}")
        declared = source.get("Parameters", {}).get(parameter, {})
        if declared.get("Type") != "CommaDelimitedList" or declared.get("Default") != "":
            problems.append(f"{parameter} is not a CommaDelimitedList defaulting to empty")
    return problems


def check_deadline_and_timeouts(source: dict) -> list[str]:
    """VENDING_DEADLINE < function Timeout < API Gateway's 29 s, so a slow vend ends in
    the service's JSON 503 and never in a Lambda timeout or an API Gateway 504."""
    problems = []
    p = props(source["Resources"]["Function"])
    timeout = p.get("Timeout")
    if not isinstance(timeout, (int, float)):
        return [f"function Timeout {timeout!r} is not a literal number of seconds"]
    if timeout >= API_GATEWAY_INTEGRATION_TIMEOUT_SECS:
        problems.append(f"function Timeout {timeout}s is not below API Gateway's {API_GATEWAY_INTEGRATION_TIMEOUT_SECS}s")
    deadline = p.get("Environment", {}).get("Variables", {}).get("VENDING_DEADLINE")
    if deadline is None:
        problems.append("VENDING_DEADLINE is not set (the service's default must not be left to chance)")
        return problems
    try:
        secs = duration_secs(deadline)
    except ValueError as err:
        return problems + [f"VENDING_DEADLINE: {err}"]
    if not secs < timeout:
        problems.append(f"VENDING_DEADLINE {deadline} is not below the function Timeout {timeout}s")
    return problems


def check_logging(source: dict) -> list[str]:
    """The service writes JSON lines in Lambda; the function's log format must say so."""
    cfg = props(source["Resources"]["Function"]).get("LoggingConfig", {})
    problems = []
    if cfg.get("LogFormat") != "JSON":
        problems.append(f"LogFormat is {cfg.get('LogFormat')!r} while the service writes JSON")
    for key in ("ApplicationLogLevel", "SystemLogLevel"):
        if key in cfg and cfg.get("LogFormat") != "JSON":
            problems.append(f"{key} is set but only allowed with LogFormat JSON")
    if cfg.get("LogGroup") != {"Ref": "FunctionLogGroup"}:
        problems.append("the function does not log to FunctionLogGroup (retention)")
    return problems


def check_checkov_skips(source: dict) -> list[str]:
    problems = []
    for name, res in source["Resources"].items():
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
            if not skip.get("id") or len(str(skip.get("comment", "")).strip()) < 40:
                problems.append(f"{name}: checkov skip {skip.get('id')} without a real justification")
    return problems


def _sums_over_every_pool(expression) -> str | None:
    """The metric a Metrics Insights query sums over every pool, or None: exactly
    SELECT SUM(metric) FROM SCHEMA("ActivationVending", Pool), with no WHERE or GROUP BY
    that would leave a pool out or split the one time series an alarm needs."""
    m = re.fullmatch(
        rf'\s*SELECT\s+SUM\((\w+)\)\s+FROM\s+SCHEMA\(\s*"?{METRIC_NAMESPACE}"?\s*,\s*Pool\s*\)\s*',
        str(expression),
        re.IGNORECASE,
    )
    return m.group(1) if m else None


def check_alarms(source: dict) -> list[str]:
    """A rotation or sweep failure in any pool raises an alarm; the account's hybrid nodes
    raise one at NodeQuotaAlarmThreshold; the function knows the quota."""
    problems = []
    alarms = {n: props(r) for n, r in source["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    for metric in FAILURE_ALARM_METRICS:
        watching = []
        for name, p in alarms.items():
            returned = [q for q in p.get("Metrics", []) if q.get("ReturnData", True) in (True, "true")]
            if len(returned) == 1 and _sums_over_every_pool(returned[0].get("Expression")) == metric:
                watching.append((name, p, returned[0]))
        if not watching:
            problems.append(f'no alarm on SELECT SUM({metric}) FROM SCHEMA("{METRIC_NAMESPACE}", Pool) (every pool, one series)')
        for name, p, query in watching:
            op, threshold = p.get("ComparisonOperator"), p.get("Threshold")
            on_first = (op == "GreaterThanThreshold" and threshold == 0) or (
                op == "GreaterThanOrEqualToThreshold" and isinstance(threshold, (int, float)) and 0 < threshold <= 1
            )
            if not on_first:
                problems.append(f"{name}: {op} {threshold!r} does not fire on a single {metric}")
            if query.get("Period") != 300 or p.get("EvaluationPeriods") != 1:
                problems.append(f"{name}: not the sum over one 5-minute period (Period {query.get('Period')}, EvaluationPeriods {p.get('EvaluationPeriods')})")
            if p.get("TreatMissingData") not in ("notBreaching", "ignore"):
                problems.append(f"{name}: TreatMissingData {p.get('TreatMissingData')!r} (no failures written means no failure)")
    nodes = [
        (name, p)
        for name, p in alarms.items()
        if p.get("MetricName") == "ManagedNodes" and p.get("Namespace") == METRIC_NAMESPACE
    ]
    if not nodes:
        problems.append(f"no alarm on {METRIC_NAMESPACE}/ManagedNodes")
    for name, p in nodes:
        if p.get("Dimensions"):
            problems.append(f"{name}: dimensions {p.get('Dimensions')}; the account-wide ManagedNodes has none")
        if p.get("Statistic") != "Maximum":
            problems.append(f"{name}: statistic {p.get('Statistic')!r}, not Maximum")
        if p.get("ComparisonOperator") != "GreaterThanOrEqualToThreshold":
            problems.append(f"{name}: {p.get('ComparisonOperator')}, not GreaterThanOrEqualToThreshold")
        if p.get("Threshold") != {"Ref": "NodeQuotaAlarmThreshold"}:
            problems.append(f"{name}: threshold {p.get('Threshold')!r}, not the NodeQuotaAlarmThreshold parameter")
    params = source.get("Parameters", {})
    quota, threshold = params.get("NodeQuota", {}), params.get("NodeQuotaAlarmThreshold", {})
    if quota.get("Type") != "Number" or quota.get("Default") != STANDARD_TIER_NODES:
        problems.append(f"NodeQuota is not a Number defaulting to the standard tier's {STANDARD_TIER_NODES}")
    if threshold.get("Type") != "Number" or threshold.get("Default") != STANDARD_TIER_NODES * 9 // 10:
        problems.append(f"NodeQuotaAlarmThreshold is not a Number defaulting to 90% of {STANDARD_TIER_NODES}")
    env = props(source["Resources"].get("Function", {})).get("Environment", {}).get("Variables", {})
    if env.get("VENDING_NODE_QUOTA") != {"Ref": "NodeQuota"}:
        problems.append(f"VENDING_NODE_QUOTA is {env.get('VENDING_NODE_QUOTA')!r}, not the NodeQuota parameter")
    return problems


def check_alarm_actions(cfn: dict) -> list[str]:
    """Every alarm notifies AlarmTopicArn when one is given, and nothing otherwise (the
    alarms exist either way)."""
    problems = []
    topic = cfn["_params"].get("AlarmTopicArn", "")
    alarms = of_type(cfn, "AWS::CloudWatch::Alarm")
    for name in ("RotationFailuresAlarm", "SweepFailuresAlarm", "PoolConfigUntrustedAlarm", "NodeQuotaAlarm"):
        if name not in alarms:
            problems.append(f"{name} is not deployed")
    for name, alarm in alarms.items():
        actions = props(alarm).get("AlarmActions", [])
        want = [topic] if topic else []
        if actions != want:
            problems.append(f"{name}: AlarmActions {actions}, not {want} (AlarmTopicArn {topic!r})")
    return problems


# Stand-ins for the dashboard body's ${...} so the JSON parses and the annotations show
# which parameter they came from.
_DASHBOARD_SUBS = {"NodeQuotaAlarmThreshold": -9001, "NodeQuota": -9002}


def dashboard_body(source: dict):
    """The dashboard's JSON (its Fn::Sub with stand-ins), or a problem as a string."""
    res = source["Resources"].get("Dashboard")
    if res is None or res.get("Type") != "AWS::CloudWatch::Dashboard":
        return "no AWS::CloudWatch::Dashboard named Dashboard"
    body = props(res).get("DashboardBody")
    text = body.get("Fn::Sub") if isinstance(body, dict) else body
    if not isinstance(text, str):
        return f"DashboardBody is {type(text).__name__}, not one JSON text"

    def sub(m):
        name = m.group(1)
        return str(_DASHBOARD_SUBS[name]) if name in _DASHBOARD_SUBS else f"<{name}>"

    try:
        return json.loads(re.sub(r"\$\{([^!}][^}]*)\}", sub, text))
    except json.JSONDecodeError as err:
        return f"DashboardBody is not JSON: {err}"


def check_dashboard(source: dict) -> list[str]:
    """A dashboard with every metric by pool, the account's nodes against the alarm
    threshold, and its console link as an output."""
    problems = []
    body = dashboard_body(source)
    if isinstance(body, str):
        return [body]
    if len(of_type(source, "AWS::CloudWatch::Dashboard")) != 1:
        problems.append("expected exactly one dashboard")
    per_pool, account_nodes = set(), []
    for widget in body.get("widgets", []):
        wp = widget.get("properties", {})
        if widget.get("type") != "metric":
            continue
        if wp.get("region") != "<AWS::Region>":
            problems.append(f"widget {wp.get('title')!r}: region {wp.get('region')!r}, not the stack's")
        for row in wp.get("metrics", []):
            for item in row:
                if isinstance(item, dict) and "expression" in item:
                    m = re.fullmatch(
                        rf"SEARCH\('\{{{METRIC_NAMESPACE},Pool\}} MetricName=\"(\w+)\"', '\w+', \d+\)", item["expression"]
                    )
                    if m:
                        per_pool.add(m.group(1))
            plain = [x for x in row if isinstance(x, str)]
            if plain == [METRIC_NAMESPACE, "ManagedNodes"]:
                marks = [a.get("value") for a in wp.get("annotations", {}).get("horizontal", [])]
                account_nodes.append(marks)
    for metric in POOL_METRICS:
        if metric not in per_pool:
            problems.append(f"the dashboard shows no {metric} for every pool (SEARCH over {{{METRIC_NAMESPACE},Pool}})")
    if not account_nodes:
        problems.append(f"the dashboard does not show the account-wide {METRIC_NAMESPACE}/ManagedNodes (no dimension)")
    elif not any(_DASHBOARD_SUBS["NodeQuotaAlarmThreshold"] in marks for marks in account_nodes):
        problems.append("the account-wide ManagedNodes graph has no line at ${NodeQuotaAlarmThreshold}")
    url = source.get("Outputs", {}).get("DashboardUrl", {}).get("Value", {})
    text = url.get("Fn::Sub") if isinstance(url, dict) else None
    if not isinstance(text, str) or "console.aws.amazon.com/cloudwatch/" not in text or "#dashboards:name=${Dashboard}" not in text:
        problems.append(f"no DashboardUrl output linking the console to the dashboard ({url!r})")
    return problems


DEPLOYED_CHECKS = [
    check_private_api,
    check_resource_policy,
    check_endpoint,
    check_stage,
    check_table,
    check_key,
    check_instance_role,
    check_api_logs_role,
    check_least_privilege,
    check_region_bound,
    check_alarm_actions,
]
SOURCE_CHECKS = [
    check_function,
    check_checkov_skips,
    check_client_cidr_rule,
    check_trust_settings,
    check_client_cidr_prefix_bound,
    check_deadline_and_timeouts,
    check_logging,
    check_alarms,
    check_dashboard,
]


# ------------------------------------------------------------------ tests


source, cfn = template_fixtures(TEMPLATE, SCENARIOS, deployed)


@pytest.mark.parametrize("check", DEPLOYED_CHECKS, ids=lambda c: c.__name__)
def test_deployed_template_holds(check, cfn):
    assert check(cfn) == []


@pytest.mark.parametrize("check", SOURCE_CHECKS, ids=lambda c: c.__name__)
def test_source_template_holds(check, source):
    assert check(source) == []


def test_default_deployment_creates_the_guarded_pieces(source):
    res = deployed(source, SCENARIOS["creates-everything"])["Resources"]
    for name in ("VpcEndpoint", "EndpointSecurityGroup", "Key", "KeyAlias", "ManagedInstanceRole"):
        assert name in res, f"{name} is not created by default"


def test_bringing_your_own_pins_the_api_to_that_endpoint(source):
    cfn = deployed(source, SCENARIOS["brings-endpoint-key-role"])
    for name in ("VpcEndpoint", "EndpointSecurityGroup", "Key", "ManagedInstanceRole"):
        assert name not in cfn["Resources"]
    assert EXISTING_VPCE in json.dumps(api_policy(cfn["Resources"]["Api"]))


def test_template_and_service_agree_on_names(source):
    """The tag key the IAM condition allows and the VENDING_* settings the template sets
    must be the ones the service uses, or the limit breaks vends in production."""
    import re

    found = [
        m.group(1)
        for path in sorted((ROOT / "lambda/src").rglob("*.rs"))
        for m in re.finditer(r'POOL_TAG: &str = "([^"]+)"', path.read_text())
    ]
    assert found == [POOL_TAG_KEY]
    config = (ROOT / "lambda/src/config.rs").read_text()
    env = source["Resources"]["Function"]["Properties"]["Environment"]["Variables"]
    for name in env:
        if name.startswith("VENDING_"):
            assert f'"{name}"' in config, f"template sets {name}, which lambda/src/config.rs never reads"


def test_template_and_service_agree_on_metrics():
    """The metric names and the namespace the alarms and the dashboard use are the ones the
    service writes, or the alarms watch nothing."""
    text = "\n".join(path.read_text() for path in sorted((ROOT / "lambda/src").rglob("*.rs")))
    for name in (METRIC_NAMESPACE, *POOL_METRICS, *FAILURE_ALARM_METRICS):
        assert f'"{name}"' in text, f"lambda/src never writes {name!r}"


# ------------------------------------------------------------------ mutations
# Each edit weakens one property; its check must object. `where` picks the
# deployment ("source" checks look at template.yaml itself).


def _res(t, name):
    return t["Resources"][name]


def _p(t, name):
    return t["Resources"][name]["Properties"]


def _custom(t):
    return _p(t, "Api")["Auth"]["ResourcePolicy"]["CustomStatements"]


def _role_statements(t):
    return _p(t, "FunctionRole")["Policies"][0]["PolicyDocument"]["Statement"]


def _stmt(statements, sid):
    return next(s for s in statements if s.get("Sid") == sid)


def m_drop_deny(t):
    _p(t, "Api")["Auth"]["ResourcePolicy"]["CustomStatements"] = [s for s in _custom(t) if s.get("Effect") != "Deny"]


def m_deny_only_other_endpoint(t):
    _stmt(_custom(t), "DenyAllButTheStackEndpoint")["Condition"] = {"StringEquals": {"aws:SourceVpce": "vpce-0badbadbadbadbad0"}}


def m_deny_narrowed(t):
    _stmt(_custom(t), "DenyAllButTheStackEndpoint")["Resource"] = "execute-api:/*/POST/*"


def m_regional_api(t):
    _p(t, "Api")["EndpointConfiguration"]["Type"] = "REGIONAL"


def m_implicit_public_api(t):
    _p(t, "Function")["Events"]["Public"] = {"Type": "Api", "Properties": {"Path": "/open", "Method": "get"}}


def m_function_url(t):
    _p(t, "Function")["FunctionUrlConfig"] = {"AuthType": "NONE"}


def m_pitr_off(t):
    _p(t, "Table")["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] = False


def m_sse_off(t):
    _p(t, "Table")["SSESpecification"]["SSEEnabled"] = False


def m_ttl_off(t):
    del _p(t, "Table")["TimeToLiveSpecification"]


def m_rotation_off(t):
    _p(t, "Key")["EnableKeyRotation"] = False


def m_key_open_to_all(t):
    _p(t, "Key")["KeyPolicy"]["Statement"].append(
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"}
    )


def m_key_admin_can_decrypt(t):
    _p(t, "Key")["KeyPolicy"]["Statement"][0]["Action"] = "kms:*"


def m_key_without_via_service(t):
    del _stmt(_p(t, "Key")["KeyPolicy"]["Statement"], "FunctionUsesThroughParameterStoreOnly")["Condition"]


def m_key_for_any_parameter(t):
    del _stmt(_p(t, "Key")["KeyPolicy"]["Statement"], "FunctionUsesThroughParameterStoreOnly")["Condition"]["StringLike"]


def m_role_key_for_any_parameter(t):
    del _stmt(_p(t, "FunctionKeyPolicy")["PolicyDocument"]["Statement"], "KeyThroughParameterStoreOnly")["Condition"]["StringLike"]


def _sealing(t, where):
    """The sealed codes' statement: in the key policy ("key") or the role's ("role")."""
    if where == "key":
        return _stmt(_p(t, "Key")["KeyPolicy"]["Statement"], "FunctionSealsCodesForThisDeploymentsPoolsOnly")
    return _stmt(_p(t, "FunctionKeyPolicy")["PolicyDocument"]["Statement"], "SealCodesForThisDeploymentsPoolsOnly")


def m_sealing_under_any_context_key(where):
    def mutate(t):
        del _sealing(t, where)["Condition"]["ForAllValues:StringEquals"]

    return mutate


def m_sealing_with_parameter_store_context(where):
    def mutate(t):
        _sealing(t, where)["Condition"]["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"].append("PARAMETER_ARN")

    return mutate


def m_sealing_without_pool_and_activation(where):
    def mutate(t):
        del _sealing(t, where)["Condition"]["Null"]

    return mutate


def m_sealing_for_any_deployment(where):
    def mutate(t):
        del _sealing(t, where)["Condition"]["StringEquals"]["kms:EncryptionContext:activation-vending:deployment"]

    return mutate


def m_sealing_generates_data_keys(where):
    def mutate(t):
        _sealing(t, where)["Action"] = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]

    return mutate


def m_drop_describe_parameters(t):
    _role_statements(t)[:] = [s for s in _role_statements(t) if s.get("Sid") != "ReadPoolConfigWriters"]


def m_drop_describe_key(t):
    statements = _p(t, "FunctionKeyPolicy")["PolicyDocument"]["Statement"]
    statements[:] = [s for s in statements if s.get("Sid") != "DescribeTheCodesKey"]


def m_describe_every_key(t):
    _stmt(_p(t, "FunctionKeyPolicy")["PolicyDocument"]["Statement"], "DescribeTheCodesKey")["Resource"] = "*"


def m_open_default_pool(t):
    del _p(t, "Function")["Environment"]["Variables"]["VENDING_DEFAULT_ALLOWED_CIDRS"]


def m_writers_ignored(t):
    _p(t, "Function")["Environment"]["Variables"]["VENDING_POOL_CONFIG_WRITERS"] = ""


def m_no_untrusted_alarm(t):
    del t["Resources"]["PoolConfigUntrustedAlarm"]


def m_wildcard_s3(t):
    _role_statements(t).append({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"})


def m_ssm_star(t):
    _stmt(_role_statements(t), "PoolParameters")["Action"] = "ssm:*"


def m_by_path_everywhere(t):
    _stmt(_role_statements(t), "ReadPoolConfigs")["Resource"] = "*"


def m_by_path_every_parameter(t):
    _stmt(_role_statements(t), "ReadPoolConfigs")["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/*"}


def m_write_configs(t):
    _stmt(_role_statements(t), "WriteOnlyTheCodes")["Resource"] = {
        "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${ParameterPrefix}/pools/*"
    }


def m_deregister_any_node(t):
    del _stmt(_role_statements(t), "DeregisterOnlyPoolNodes")["Condition"]


def m_deregister_star(t):
    _stmt(_role_statements(t), "DeregisterOnlyPoolNodes")["Resource"] = "*"


def m_deregister_wrong_tag(t):
    _stmt(_role_statements(t), "DeregisterOnlyPoolNodes")["Condition"] = {"StringLike": {"ssm:resourceTag/Name": "?*"}}


def m_tag_existing_nodes(t):
    t["Resources"]["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"] = [
        s for s in _role_statements(t) if s.get("Sid") != "NeverTagExistingResources"
    ]


def m_tag_other_deployments_nodes(t):
    t["Resources"]["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"] = [
        s for s in _role_statements(t) if s.get("Sid") != "NeverTagOtherDeploymentsNodes"
    ]


def m_tag_nodes_with_the_pool_tag(t):
    _stmt(_role_statements(t), "TagNodesOnlyWithNameAndMachineId")["Condition"]["ForAnyValue:StringNotEquals"]["aws:TagKeys"].append(
        POOL_TAG_KEY
    )
    _stmt(_role_statements(t), "NameAndMarkThisDeploymentsNodes")["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"].append(
        POOL_TAG_KEY
    )


def m_untag_nodes(t):
    t["Resources"]["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"] = [
        s for s in _role_statements(t) if s.get("Sid") != "NeverUntagNodes"
    ]


def m_create_activation_untagged(t):
    del _stmt(_role_statements(t), "CreateActivationsThatCarryThePoolTag")["Condition"]


def m_no_describe_instances(t):
    _stmt(_role_statements(t), "ActivationsAdmitNoResource")["Action"].remove("ssm:DescribeInstanceInformation")


def m_passrole_extra_role(t):
    _stmt(_role_statements(t), "PassOnlyThePoolRolesToSsm")["Resource"]["Fn::If"][1].append(
        {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/Administrator"}
    )


def m_passrole_pool_wildcard(t):
    _stmt(_role_statements(t), "PassOnlyThePoolRolesToSsm")["Resource"]["Fn::If"][1][3] = {
        "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/*"
    }


def m_passrole_ignores_pool_roles(t):
    _stmt(_role_statements(t), "PassOnlyThePoolRolesToSsm")["Resource"]["Fn::If"][1] = _stmt(
        _role_statements(t), "PassOnlyThePoolRolesToSsm"
    )["Resource"]["Fn::If"][1][:3]


def m_drop_source_deny(t):
    _p(t, "Api")["Auth"]["ResourcePolicy"]["CustomStatements"] = [
        s for s in _custom(t) if "DenyOutsideAllowedSourceCidrs" not in json.dumps(s)
    ]


def m_source_deny_fixed_range(t):
    for s in _custom(t):
        if "DenyOutsideAllowedSourceCidrs" in json.dumps(s):
            s["Fn::If"][1]["Condition"] = {"NotIpAddress": {"aws:VpcSourceIp": ["0.0.0.0/0"]}}


def m_source_deny_unconditional(t):
    for i, s in enumerate(_custom(t)):
        if "DenyOutsideAllowedSourceCidrs" in json.dumps(s):
            _custom(t)[i] = s["Fn::If"][1]


def m_parameters_everywhere(t):
    _stmt(_role_statements(t), "PoolParameters")["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/*"}


def m_passrole_unconditioned(t):
    del _stmt(_role_statements(t), "PassOnlyThePoolRolesToSsm")["Condition"]


def m_passrole_any_role(t):
    _stmt(_role_statements(t), "PassOnlyThePoolRolesToSsm")["Resource"] = "*"


def m_tagging_unlimited(t):
    del _stmt(_role_statements(t), "TagActivationsWithThePoolTag")["Condition"]


def m_admin_policy(t):
    _p(t, "FunctionRole")["ManagedPolicyArns"] = ["arn:aws:iam::aws:policy/AdministratorAccess"]


def m_trust_without_source_account(t):
    del _p(t, "ManagedInstanceRole")["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]


def m_instance_role_extra_policy(t):
    _p(t, "ManagedInstanceRole")["ManagedPolicyArns"].append("arn:aws:iam::aws:policy/AmazonS3FullAccess")


def m_sg_world(t):
    _p(t, "EndpointSecurityGroup")["SecurityGroupIngress"][0]["CidrIp"] = "0.0.0.0/0"


def m_sg_extra_port(t):
    _p(t, "EndpointSecurityGroup")["SecurityGroupIngress"].append(
        {"Description": "ssh", "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": {"Ref": "ClientCidr"}}
    )


def m_drop_cidr_rule(t):
    del t["Rules"]["ClientCidrIsNotTheWorld"]


def m_cidr_any_prefix(t):
    t["Parameters"]["ClientCidr"]["AllowedPattern"] = r"^((\d{1,3}\.){3}\d{1,3}/\d{1,2})?$"


def m_region_free(sid):
    def mutate(t):
        statements = _role_statements(t) + _p(t, "FunctionKeyPolicy")["PolicyDocument"]["Statement"]
        del _stmt(statements, sid)["Condition"]["StringEquals"]["aws:RequestedRegion"]

    return mutate


def m_tag_deny_this_region(t):
    st = _stmt(_role_statements(t), "NeverTagExistingResources")
    st["Resource"] = [{"Fn::Sub": r["Fn::Sub"].replace(":*:", ":${AWS::Region}:", 1)} for r in st["Resource"]]


def m_data_trace(t):
    _p(t, "Api")["MethodSettings"][0]["DataTraceEnabled"] = True


def m_no_throttle(t):
    for key in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
        del _p(t, "Api")["MethodSettings"][0][key]


def m_no_retention(t):
    del _p(t, "FunctionLogGroup")["RetentionInDays"]


def m_x86_default(t):
    t["Parameters"]["Architecture"]["Default"] = "x86_64"


def m_private_dns_default_on(t):
    t["Parameters"]["EndpointPrivateDns"]["Default"] = "true"


def m_logs_role_source_account(t):
    _p(t, "ApiGatewayLogsRole")["AssumeRolePolicyDocument"]["Statement"][0]["Condition"] = {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    }


def m_deadline_at_timeout(t):
    _p(t, "Function")["Environment"]["Variables"]["VENDING_DEADLINE"] = "25s"


def m_deadline_missing(t):
    del _p(t, "Function")["Environment"]["Variables"]["VENDING_DEADLINE"]


def m_timeout_past_api_gateway(t):
    _p(t, "Function")["Timeout"] = 30
    _p(t, "Function")["Environment"]["Variables"]["VENDING_DEADLINE"] = "20s"


def m_text_logs(t):
    _p(t, "Function")["LoggingConfig"]["LogFormat"] = "Text"


def m_unjustified_skip(t):
    _res(t, "Table")["Metadata"]["checkov"]["skip"].append({"id": "CKV_AWS_28"})


def _rotation_query(t):
    return _p(t, "RotationFailuresAlarm")["Metrics"][0]


def m_rotation_alarm_one_pool(t):
    _rotation_query(t)["Expression"] += " WHERE Pool = 'default'"


def m_rotation_alarm_grouped(t):
    _rotation_query(t)["Expression"] += " GROUP BY Pool"


def m_rotation_alarm_threshold_5(t):
    _p(t, "RotationFailuresAlarm")["Threshold"] = 5


def m_rotation_alarm_wrong_metric(t):
    _rotation_query(t)["Expression"] = _rotation_query(t)["Expression"].replace("RotationFailures", "Rotations")


def m_no_sweep_alarm(t):
    del t["Resources"]["SweepFailuresAlarm"]


def m_sweep_alarm_daily(t):
    _p(t, "SweepFailuresAlarm")["Metrics"][0]["Period"] = 86400


def m_node_alarm_literal_threshold(t):
    _p(t, "NodeQuotaAlarm")["Threshold"] = 1000


def m_node_alarm_one_pool(t):
    _p(t, "NodeQuotaAlarm")["Dimensions"] = [{"Name": "Pool", "Value": "default"}]


def m_node_alarm_other_namespace(t):
    _p(t, "NodeQuotaAlarm")["Namespace"] = "AWS/SSM"


def m_node_alarm_minimum(t):
    _p(t, "NodeQuotaAlarm")["Statistic"] = "Minimum"


def m_threshold_at_the_quota(t):
    t["Parameters"]["NodeQuotaAlarmThreshold"]["Default"] = 1000


def m_node_quota_env_missing(t):
    del _p(t, "Function")["Environment"]["Variables"]["VENDING_NODE_QUOTA"]


def m_alarm_without_topic(t):
    del _p(t, "RotationFailuresAlarm")["AlarmActions"]


def m_alarm_fixed_topic(t):
    _p(t, "NodeQuotaAlarm")["AlarmActions"] = ["arn:aws:sns:eu-west-1:123456789012:someone-else"]


def _body(t):
    return _p(t, "Dashboard")["DashboardBody"]


def m_dashboard_without_slots(t):
    _body(t)["Fn::Sub"] = _body(t)["Fn::Sub"].replace('\\"SlotsRemaining\\"', '\\"Vends\\"')


def m_dashboard_nodes_one_pool(t):
    _body(t)["Fn::Sub"] = _body(t)["Fn::Sub"].replace(
        '{ActivationVending,Pool} MetricName=\\"ManagedNodes\\"', '{ActivationVending,Pool} Pool=\\"default\\" MetricName=\\"ManagedNodes\\"'
    )


def m_dashboard_literal_threshold(t):
    _body(t)["Fn::Sub"] = _body(t)["Fn::Sub"].replace("${NodeQuotaAlarmThreshold}", "900")


def m_dashboard_broken_json(t):
    _body(t)["Fn::Sub"] = _body(t)["Fn::Sub"].rstrip().rstrip("}")


def m_no_dashboard(t):
    del t["Resources"]["Dashboard"]


def m_no_dashboard_output(t):
    del t["Outputs"]["DashboardUrl"]


MUTATIONS = [
    ("drop the deny statement", m_drop_deny, check_resource_policy, "creates-everything"),
    ("deny only another endpoint", m_deny_only_other_endpoint, check_resource_policy, "creates-everything"),
    ("deny narrowed to POST", m_deny_narrowed, check_resource_policy, "brings-endpoint-key-role"),
    ("regional API", m_regional_api, check_private_api, "creates-everything"),
    ("Api event without RestApiId", m_implicit_public_api, check_private_api, "creates-everything"),
    ("Api event without RestApiId (source)", m_implicit_public_api, check_function, "source"),
    ("function URL", m_function_url, check_private_api, "creates-everything"),
    ("PITR off", m_pitr_off, check_table, "creates-everything"),
    ("SSE off", m_sse_off, check_table, "creates-everything"),
    ("TTL removed", m_ttl_off, check_table, "creates-everything"),
    ("key rotation off", m_rotation_off, check_key, "creates-everything"),
    ("key open to everyone", m_key_open_to_all, check_key, "creates-everything"),
    ("key admin may decrypt", m_key_admin_can_decrypt, check_key, "creates-everything"),
    ("key use outside Parameter Store", m_key_without_via_service, check_key, "creates-everything"),
    ("s3:GetObject on *", m_wildcard_s3, check_least_privilege, "creates-everything"),
    ("ssm:* on the path", m_ssm_star, check_least_privilege, "creates-everything"),
    ("every parameter", m_parameters_everywhere, check_least_privilege, "brings-endpoint-key-role"),
    ("PassRole without PassedToService", m_passrole_unconditioned, check_least_privilege, "creates-everything"),
    ("PassRole on any role", m_passrole_any_role, check_least_privilege, "brings-endpoint-key-role"),
    ("PassRole on any role (pools)", m_passrole_any_role, check_least_privilege, "pools-and-source-ranges"),
    ("PassRole without PassedToService (pools)", m_passrole_unconditioned, check_least_privilege, "pools-and-source-ranges"),
    ("PassRole on a role nobody listed", m_passrole_extra_role, check_least_privilege, "pools-and-source-ranges"),
    ("PassRole on role/* for the pools", m_passrole_pool_wildcard, check_least_privilege, "pools-and-source-ranges"),
    ("PoolRoleNames not passable", m_passrole_ignores_pool_roles, check_least_privilege, "ten-pool-roles"),
    ("tagging any key on any SSM resource", m_tagging_unlimited, check_least_privilege, "creates-everything"),
    ("activations without the pool tag", m_create_activation_untagged, check_least_privilege, "creates-everything"),
    ("tagging existing nodes and parameters", m_tag_existing_nodes, check_least_privilege, "creates-everything"),
    ("tagging another deployment's nodes", m_tag_other_deployments_nodes, check_least_privilege, "creates-everything"),
    ("tagging nodes with the pool tag", m_tag_nodes_with_the_pool_tag, check_least_privilege, "creates-everything"),
    ("untagging nodes", m_untag_nodes, check_least_privilege, "creates-everything"),
    ("deregister without the pool tag condition", m_deregister_any_node, check_least_privilege, "creates-everything"),
    ("deregister on *", m_deregister_star, check_least_privilege, "brings-endpoint-key-role"),
    ("deregister conditioned on another tag", m_deregister_wrong_tag, check_least_privilege, "creates-everything"),
    ("GetParametersByPath on *", m_by_path_everywhere, check_least_privilege, "creates-everything"),
    ("GetParametersByPath on every parameter", m_by_path_every_parameter, check_least_privilege, "brings-endpoint-key-role"),
    ("PutParameter on the pool configs", m_write_configs, check_least_privilege, "creates-everything"),
    ("no DescribeInstanceInformation", m_no_describe_instances, check_least_privilege, "creates-everything"),
    ("no VpcSourceIp deny with AllowedSourceCidrs set", m_drop_source_deny, check_resource_policy, "pools-and-source-ranges"),
    ("VpcSourceIp deny on a fixed range", m_source_deny_fixed_range, check_resource_policy, "pools-and-source-ranges"),
    ("VpcSourceIp deny without AllowedSourceCidrs", m_source_deny_unconditional, check_resource_policy, "creates-everything"),
    ("AdministratorAccess on the function", m_admin_policy, check_least_privilege, "creates-everything"),
    ("trust without source account", m_trust_without_source_account, check_instance_role, "creates-everything"),
    ("S3 on the managed-instance role", m_instance_role_extra_policy, check_instance_role, "creates-everything"),
    ("endpoint open to 0.0.0.0/0", m_sg_world, check_endpoint, "creates-everything"),
    ("endpoint admits port 22", m_sg_extra_port, check_endpoint, "creates-everything"),
    ("no rule against 0.0.0.0/0", m_drop_cidr_rule, check_client_cidr_rule, "source"),
    ("ClientCidr 0.0.0.0/1 admitted", m_cidr_any_prefix, check_client_cidr_prefix_bound, "source"),
    ("CreateActivation in every Region", m_region_free("CreateActivationsThatCarryThePoolTag"), check_region_bound, "creates-everything"),
    ("tagging in every Region", m_region_free("TagActivationsWithThePoolTag"), check_region_bound, "creates-everything"),
    ("DeleteActivation in every Region", m_region_free("ActivationsAdmitNoResource"), check_region_bound, "creates-everything"),
    ("PassRole in every Region", m_region_free("PassOnlyThePoolRolesToSsm"), check_region_bound, "pools-and-source-ranges"),
    ("the key in every Region", m_region_free("KeyThroughParameterStoreOnly"), check_region_bound, "brings-endpoint-key-role"),
    ("tag deny in the stack's Region only", m_tag_deny_this_region, check_region_bound, "creates-everything"),
    ("data trace on", m_data_trace, check_stage, "creates-everything"),
    ("no stage throttling", m_no_throttle, check_stage, "creates-everything"),
    ("log group kept forever", m_no_retention, check_stage, "creates-everything"),
    ("x86_64 by default", m_x86_default, check_function, "source"),
    ("checkov skip without justification", m_unjustified_skip, check_checkov_skips, "source"),
    ("private DNS on by default", m_private_dns_default_on, check_endpoint, "creates-everything"),
    ("logs role trust on aws:SourceAccount", m_logs_role_source_account, check_api_logs_role, "creates-everything"),
    ("deadline not below the timeout", m_deadline_at_timeout, check_deadline_and_timeouts, "source"),
    ("no VENDING_DEADLINE", m_deadline_missing, check_deadline_and_timeouts, "source"),
    ("timeout past API Gateway's 29 s", m_timeout_past_api_gateway, check_deadline_and_timeouts, "source"),
    ("text logs while the code writes JSON", m_text_logs, check_logging, "source"),
    ("rotation alarm on the default pool only", m_rotation_alarm_one_pool, check_alarms, "source"),
    ("rotation alarm split by pool", m_rotation_alarm_grouped, check_alarms, "source"),
    ("rotation alarm ignores a single failure", m_rotation_alarm_threshold_5, check_alarms, "source"),
    ("rotation alarm on Rotations", m_rotation_alarm_wrong_metric, check_alarms, "source"),
    ("no sweep failure alarm", m_no_sweep_alarm, check_alarms, "source"),
    ("sweep alarm over a day", m_sweep_alarm_daily, check_alarms, "source"),
    ("node alarm at a literal threshold", m_node_alarm_literal_threshold, check_alarms, "source"),
    ("node alarm on one pool", m_node_alarm_one_pool, check_alarms, "source"),
    ("node alarm in another namespace", m_node_alarm_other_namespace, check_alarms, "source"),
    ("node alarm on the minimum", m_node_alarm_minimum, check_alarms, "source"),
    ("node alarm threshold defaults to the quota", m_threshold_at_the_quota, check_alarms, "source"),
    ("no VENDING_NODE_QUOTA", m_node_quota_env_missing, check_alarms, "source"),
    ("no VENDING_NODE_QUOTA (function)", m_node_quota_env_missing, check_function, "source"),
    ("alarm silent with a topic", m_alarm_without_topic, check_alarm_actions, "pools-and-source-ranges"),
    ("alarm notifies a fixed topic", m_alarm_fixed_topic, check_alarm_actions, "creates-everything"),
    ("no sweep failure alarm deployed", m_no_sweep_alarm, check_alarm_actions, "creates-everything"),
    ("dashboard without slots remaining", m_dashboard_without_slots, check_dashboard, "source"),
    ("dashboard nodes of one pool", m_dashboard_nodes_one_pool, check_dashboard, "source"),
    ("dashboard threshold line not the parameter", m_dashboard_literal_threshold, check_dashboard, "source"),
    ("dashboard body not JSON", m_dashboard_broken_json, check_dashboard, "source"),
    ("no dashboard", m_no_dashboard, check_dashboard, "source"),
    ("no dashboard link", m_no_dashboard_output, check_dashboard, "source"),
    ("key usable for any parameter", m_key_for_any_parameter, check_key, "creates-everything"),
    ("sealed codes under any context key (key)", m_sealing_under_any_context_key("key"), check_key, "creates-everything"),
    ("sealed codes under Parameter Store's context (key)", m_sealing_with_parameter_store_context("key"), check_key, "creates-everything"),
    ("sealed codes naming no pool or activation (key)", m_sealing_without_pool_and_activation("key"), check_key, "creates-everything"),
    ("sealed codes of any deployment (key)", m_sealing_for_any_deployment("key"), check_key, "creates-everything"),
    ("sealed codes with GenerateDataKey (key)", m_sealing_generates_data_keys("key"), check_key, "creates-everything"),
    ("sealed codes under any context key (role)", m_sealing_under_any_context_key("role"), check_least_privilege, "brings-endpoint-key-role"),
    ("sealed codes under Parameter Store's context (role)", m_sealing_with_parameter_store_context("role"), check_least_privilege, "creates-everything"),
    ("sealed codes naming no pool or activation (role)", m_sealing_without_pool_and_activation("role"), check_least_privilege, "creates-everything"),
    ("sealed codes of any deployment (role)", m_sealing_for_any_deployment("role"), check_least_privilege, "creates-everything"),
    ("sealed codes in every Region", m_region_free("SealCodesForThisDeploymentsPoolsOnly"), check_region_bound, "brings-endpoint-key-role"),
    ("role may use the key for any parameter", m_role_key_for_any_parameter, check_least_privilege, "brings-endpoint-key-role"),
    ("no DescribeParameters", m_drop_describe_parameters, check_least_privilege, "creates-everything"),
    ("no DescribeKey", m_drop_describe_key, check_least_privilege, "creates-everything"),
    ("DescribeKey on every key", m_describe_every_key, check_least_privilege, "brings-endpoint-key-role"),
    ("implicit default pool open to all", m_open_default_pool, check_trust_settings, "source"),
    ("PoolConfigWriters not passed on", m_writers_ignored, check_trust_settings, "source"),
    ("no untrusted-config alarm", m_no_untrusted_alarm, check_alarms, "source"),
]


@pytest.mark.parametrize(
    "text,secs", [("20s", 20), ("500ms", 0.5), ("1m30s", 90), ("2h", 7200)], ids=["20s", "500ms", "1m30s", "2h"]
)
def test_duration_parser_reads_the_service_syntax(text, secs):
    assert duration_secs(text) == secs


@pytest.mark.parametrize("text", ["20", "", "20 s", "s20", "1.5s"])
def test_duration_parser_refuses_what_the_service_refuses(text):
    with pytest.raises(ValueError):
        duration_secs(text)


@pytest.mark.parametrize("mutate,check,where", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_weakening_is_caught(source, mutate, check, where):
    weakened = copy.deepcopy(source)
    mutate(weakened)
    target = weakened if where == "source" else deployed(weakened, SCENARIOS[where])
    original = source if where == "source" else deployed(source, SCENARIOS[where])
    assert check(original) == [], "the unmodified template must pass this check"
    assert check(target) != [], f"{check.__name__} did not notice the weakening"
