"""Security properties of the container deployment (Dockerfile, deploy/ecs/template.yaml)
that a later edit must not silently weaken.

The ECS template is read with its short-form intrinsics, its Fn::ForEach loops are
expanded as the AWS::LanguageExtensions transform would, and it is resolved for one set
of parameter values, so each check looks at what would actually be created: the
internal load balancer, its listener and security groups, the tasks and their roles.

Two deployments are checked: the default one, where the stack creates the KMS key and
the managed-instance role, and one that brings both. The task role is compared with the
Lambda function's role in template.yaml statement by statement: the container must get
exactly the function's permissions. Every check returns a list of problems; the mutation
tests at the end apply one weakening edit each to a copy of the template (or of the
Dockerfile) and assert that its check objects, which proves the checks can fail.

Run: .venv-tools/bin/python -m pytest tests/template/test_ecs_template.py
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

from cfn_helpers import (
    PARAMETER_ARN_CONTEXT,
    SEALED_CODE_ACTIONS,
    as_list,
    bound_to_code_parameters,
    bound_to_sealed_code_context,
    cidr_pattern_problems,
    load_template,
    of_type,
    parameter_values,
    principal_is_everyone,
    props,
    region_problems,
    template_fixtures,
)

ROOT = Path(__file__).resolve().parents[2]
ECS_TEMPLATE = ROOT / "deploy/ecs/template.yaml"
LAMBDA_TEMPLATE = ROOT / "template.yaml"
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"

# The only actions a role may hold on Resource "*": SSM activations, node listing and
# the ECR authorization token have no resource type in IAM.
WILDCARD_RESOURCE_ACTIONS = {
    "ssm:CreateActivation",
    "ssm:DescribeActivations",
    "ssm:DeleteActivation",
    "ssm:AddTagsToResource",
    "ssm:DescribeInstanceInformation",
    "ssm:DescribeParameters",
    "ecr:GetAuthorizationToken",
}
# Actions on "*" that must require the pool tag on the request.
POOL_TAGGED_ACTIONS = {"ssm:CreateActivation", "ssm:AddTagsToResource"}
POOL_TAG_KEY = "activation-vending:pool"
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
# Lambda-only settings the container does not need.
LAMBDA_ONLY_ENV = {"AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH"}
# The function's statements the task role does not take: the awslogs driver writes the
# container's logs with the execution role.
LAMBDA_ONLY_SIDS = {"Logs"}
CONTAINER_PORT = 8080
# Parameter Store's encryption context on every use of the codes' key, and the one value
# the key may be used for: the stack's code parameters.
# The load balancer's idle timeout (the ALB default; the template does not change it).
ALB_IDLE_TIMEOUT_SECS = 60
# Names that must never be baked into the image.
SECRET_NAMES = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|SESSION|CREDENTIAL|ACTIVATION_CODE)", re.I)

CLIENT_CIDRS = "10.20.0.0/16,192.168.40.0/24"
ALB_CIDRS = "10.0.1.0/24,10.0.2.0/24"
COMMON = {
    "ImageRepository": "activation-vending",
    "ImageTag": "0a1b2c3",
    "VpcId": "vpc-0123456789abcdef0",
    "ServiceSubnetIds": "subnet-0aaaaaaaaaaaaaaa1,subnet-0aaaaaaaaaaaaaaa2",
    "LoadBalancerSubnetIds": "subnet-0bbbbbbbbbbbbbbb1,subnet-0bbbbbbbbbbbbbbb2",
    "LoadBalancerSubnetCidrs": ALB_CIDRS,
    "ClientCidrs": CLIENT_CIDRS,
    "CertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/1234abcd-12ab-34cd-56ef-1234567890ab",
}
SCENARIOS = {
    "creates-key-and-role": dict(COMMON),
    "brings-key-and-role": dict(
        COMMON,
        ExistingKmsKeyArn="arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        ExistingInstanceRoleName="OnPremServers",
        ClientCidrs="172.16.8.0/22",
    ),
    "pool-roles": dict(
        COMMON,
        PoolRoleNames="LinuxProd,WindowsProd",
        PoolConfigWriters="arn:aws:sts::123456789012:assumed-role/pool-admin/*",
        AlarmTopicArn="arn:aws:sns:eu-west-1:123456789012:vending-alarms",
    ),
}
LIST_TYPES = ("CommaDelimitedList", "List<AWS::EC2::Subnet::Id>", "List<AWS::EC2::SecurityGroup::Id>")

NOVALUE = object()


# ------------------------------------------------------------------ loading


def param(params: dict, template: dict, name: str):
    declared = template.get("Parameters", {}).get(name, {})
    if declared.get("Type") in LIST_TYPES:
        return params[name].split(",")
    return params[name]


def _substitute(node, name: str, value: str):
    """Fn::ForEach's replacement of ${name}, &{name} and Ref name in one fragment."""
    if isinstance(node, dict):
        if node == {"Ref": name}:
            return value
        return {
            _substitute(k, name, value): _substitute(v, name, value) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_substitute(x, name, value) for x in node]
    if isinstance(node, str):
        return node.replace("${" + name + "}", value).replace(
            "&{" + name + "}", re.sub(r"[^A-Za-z0-9]", "", value)
        )
    return node


def expand_foreach(resources: dict, params: dict, template: dict) -> dict:
    """What AWS::LanguageExtensions makes of Fn::ForEach::* in Resources."""
    out = {}
    for key, value in resources.items():
        if not key.startswith("Fn::ForEach::"):
            out[key] = value
            continue
        name, collection, fragment = value
        if isinstance(collection, dict) and "Ref" in collection:
            items = param(params, template, collection["Ref"])
        else:
            items = collection
        for item in items:
            for rkey, rvalue in _substitute(fragment, name, item).items():
                out[rkey] = rvalue
    return out


def _condition(expr, params, conds, template):
    if isinstance(expr, dict) and len(expr) == 1:
        (fn, arg), = expr.items()
        if fn == "Condition":
            return conds[arg]
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


def resolve(node, params, conds, template):
    """Resolves Fn::If, Fn::Join and Ref to parameters; leaves resource refs, !Sub and !GetAtt."""
    if isinstance(node, dict):
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Fn::If":
                name, yes, no = arg
                return resolve(yes if conds[name] else no, params, conds, template)
            if fn == "Ref" and arg == "AWS::NoValue":
                return NOVALUE
            if fn == "Ref" and arg in params:
                return param(params, template, arg)
            if fn == "Fn::Join":
                sep, items = arg
                items = resolve(items, params, conds, template)
                if isinstance(items, list) and all(isinstance(i, str) for i in items):
                    return sep.join(items)
        out = {}
        for key, value in node.items():
            value = resolve(value, params, conds, template)
            if value is not NOVALUE:
                out[key] = value
        return out
    if isinstance(node, list):
        return [v for v in (resolve(x, params, conds, template) for x in node) if v is not NOVALUE]
    return node


def deployed(source: dict, overrides: dict) -> dict:
    """The resources that would be created with these parameters."""
    params = parameter_values(source, overrides)
    conds: dict = {}
    for name, expr in source.get("Conditions", {}).items():
        conds[name] = _condition(expr, params, conds, source)
    resources = expand_foreach(source["Resources"], params, source)
    kept = {
        name: res
        for name, res in resources.items()
        if "Condition" not in res or conds[res["Condition"]]
    }
    return {
        "Resources": resolve(kept, params, conds, source),
        "_params": params,
        "_source": source,
    }


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest.strip()))
    return stages


# ------------------------------------------------------------------ helpers


def role_statements(cfn: dict, role: str):
    """(policy resource, statement) for every identity statement attached to `role`."""
    res = cfn["Resources"]
    for pol in props(res.get(role, {})).get("Policies", []):
        for st in as_list(pol.get("PolicyDocument", {}).get("Statement")):
            yield role, st
    for name, r in res.items():
        if isinstance(r, dict) and r.get("Type") in ("AWS::IAM::Policy", "AWS::IAM::RolePolicy"):
            p = props(r)
            attached = as_list(p.get("RoleName")) + as_list(p.get("Roles"))
            if {"Ref": role} in attached:
                for st in as_list(p.get("PolicyDocument", {}).get("Statement")):
                    yield name, st


def normalized(st: dict) -> dict:
    """A statement with its action lists sorted, for comparison."""
    st = copy.deepcopy(st)
    st["Action"] = sorted(as_list(st.get("Action")))
    return st


def task_container(cfn: dict) -> dict:
    tds = of_type(cfn, "AWS::ECS::TaskDefinition")
    if len(tds) != 1:
        return {}
    containers = props(next(iter(tds.values()))).get("ContainerDefinitions", [])
    return containers[0] if len(containers) == 1 else {}


def env_of(container: dict) -> dict:
    return {e.get("Name"): e.get("Value") for e in container.get("Environment", [])}


def ingress_rules(cfn: dict, group: str) -> list[dict]:
    """Every ingress rule of a security group: inline and separate resources."""
    res = cfn["Resources"]
    rules = list(props(res.get(group, {})).get("SecurityGroupIngress", []))
    for r in of_type(cfn, "AWS::EC2::SecurityGroupIngress").values():
        p = props(r)
        if p.get("GroupId") in ({"Ref": group}, {"Fn::GetAtt": [group, "GroupId"]}):
            rules.append({k: v for k, v in p.items() if k != "GroupId"})
    return rules


# ------------------------------------------------------------------ checks


def check_internal_load_balancer(cfn: dict) -> list[str]:
    problems = []
    lbs = of_type(cfn, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    if list(lbs) != ["LoadBalancer"]:
        return [f"expected the one load balancer `LoadBalancer`, found {sorted(lbs)}"]
    p = props(lbs["LoadBalancer"])
    if p.get("Scheme") != "internal":
        problems.append(f"load balancer scheme is {p.get('Scheme')!r}, not internal")
    if p.get("Type", "application") != "application":
        problems.append(f"load balancer type is {p.get('Type')!r}, not application")
    if p.get("Subnets") != cfn["_params"]["LoadBalancerSubnetIds"].split(","):
        problems.append("load balancer is not in LoadBalancerSubnetIds")
    if p.get("SecurityGroups") != [{"Ref": "LoadBalancerSecurityGroup"}]:
        problems.append("load balancer is not guarded by LoadBalancerSecurityGroup alone")
    for other in ("AWS::ApiGatewayV2::Api", "AWS::ApiGateway::RestApi", "AWS::EC2::EIP"):
        if of_type(cfn, other):
            problems.append(f"{other} opens another way in")
    return problems


def check_https_listener(cfn: dict) -> list[str]:
    problems = []
    listeners = of_type(cfn, "AWS::ElasticLoadBalancingV2::Listener")
    if len(listeners) != 1:
        problems.append(f"expected one listener, found {sorted(listeners)}")
    for name, listener in listeners.items():
        p = props(listener)
        if p.get("Protocol") != "HTTPS" or p.get("Port") != 443:
            problems.append(f"{name}: {p.get('Protocol')} on {p.get('Port')}, not HTTPS on 443")
        certs = [c.get("CertificateArn") for c in p.get("Certificates", [])]
        if certs != [cfn["_params"]["CertificateArn"]]:
            problems.append(f"{name}: certificates {certs} are not the CertificateArn parameter")
        policy = str(p.get("SslPolicy", ""))
        if not policy.startswith("ELBSecurityPolicy-TLS13-1-2") or "Ext" in policy:
            problems.append(f"{name}: SSL policy {policy!r} admits more than TLS 1.2 and 1.3 with strong ciphers")
        actions = p.get("DefaultActions", [])
        if [a.get("TargetGroupArn") for a in actions] != [{"Ref": "TargetGroup"}]:
            problems.append(f"{name}: does not forward to TargetGroup alone")
    if of_type(cfn, "AWS::ElasticLoadBalancingV2::ListenerRule"):
        problems.append("listener rules route elsewhere")
    return problems


def check_client_ingress(cfn: dict) -> list[str]:
    """The load balancer admits TCP 443 from each ClientCidrs entry and nothing else."""
    problems = []
    cidrs = cfn["_params"]["ClientCidrs"].split(",")
    want = sorted(({"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIp": c} for c in cidrs), key=json.dumps)
    rules = ingress_rules(cfn, "LoadBalancerSecurityGroup")
    got = sorted(({k: r.get(k) for k in ("IpProtocol", "FromPort", "ToPort", "CidrIp")} for r in rules), key=json.dumps)
    if got != want:
        problems.append(f"load balancer ingress is {got}, not TCP 443 from {cidrs} only")
    for r in rules:
        if r.get("CidrIp") == "0.0.0.0/0" or r.get("CidrIpv6") == "::/0":
            problems.append(f"load balancer ingress open to the world: {r}")
        for key in ("CidrIpv6", "SourceSecurityGroupId", "SourcePrefixListId"):
            if key in r:
                problems.append(f"load balancer ingress from {key} {r[key]}")
    egress = props(cfn["Resources"].get("LoadBalancerSecurityGroup", {})).get("SecurityGroupEgress", [])
    for rule in egress:
        if rule.get("CidrIp") == "0.0.0.0/0":
            problems.append("load balancer egress open to the world (it only needs the tasks)")
    return problems


def check_client_cidr_rule(source: dict) -> list[str]:
    for rule in source.get("Rules", {}).values():
        for assertion in rule.get("Assertions", []):
            if assertion.get("Assert") == {"Fn::Not": [{"Fn::Contains": [{"Ref": "ClientCidrs"}, "0.0.0.0/0"]}]}:
                return []
    return ["no rule refuses 0.0.0.0/0 in ClientCidrs"]


def check_client_cidr_prefix_bound(source: dict) -> list[str]:
    return cidr_pattern_problems(source["Parameters"]["ClientCidrs"], "ClientCidrs")


def check_region_bound(cfn: dict) -> list[str]:
    """Every role's rights hold in the stack's Region only (issue 18, item 4)."""
    return region_problems(pair for role in of_type(cfn, "AWS::IAM::Role") for pair in role_statements(cfn, role))


def check_tasks_reachable_from_load_balancer_only(cfn: dict) -> list[str]:
    problems = []
    rules = ingress_rules(cfn, "ServiceSecurityGroup")
    want = [
        {
            "IpProtocol": "tcp",
            "FromPort": CONTAINER_PORT,
            "ToPort": CONTAINER_PORT,
            "SourceSecurityGroupId": {"Ref": "LoadBalancerSecurityGroup"},
        }
    ]
    got = [{k: r.get(k) for k in ("IpProtocol", "FromPort", "ToPort", "SourceSecurityGroupId")} for r in rules]
    if got != want or any("CidrIp" in r or "CidrIpv6" in r for r in rules):
        problems.append(f"task ingress is {rules}, not port {CONTAINER_PORT} from the load balancer only")
    services = of_type(cfn, "AWS::ECS::Service")
    if len(services) != 1:
        return problems + [f"expected one ECS service, found {sorted(services)}"]
    net = props(next(iter(services.values()))).get("NetworkConfiguration", {}).get("AwsvpcConfiguration", {})
    if net.get("AssignPublicIp") != "DISABLED":
        problems.append("tasks get a public IP")
    if net.get("Subnets") != cfn["_params"]["ServiceSubnetIds"].split(","):
        problems.append("tasks are not in ServiceSubnetIds (private subnets)")
    if net.get("SecurityGroups") != [{"Ref": "ServiceSecurityGroup"}]:
        problems.append("tasks are not guarded by ServiceSecurityGroup alone")
    return problems


def check_health_check(cfn: dict) -> list[str]:
    problems = []
    tgs = of_type(cfn, "AWS::ElasticLoadBalancingV2::TargetGroup")
    if list(tgs) != ["TargetGroup"]:
        return [f"expected the one target group `TargetGroup`, found {sorted(tgs)}"]
    p = props(tgs["TargetGroup"])
    if p.get("HealthCheckPath") != "/health":
        problems.append(f"health check path is {p.get('HealthCheckPath')!r}, not /health")
    if p.get("Matcher", {}).get("HttpCode") != "200":
        problems.append(f"health check expects {p.get('Matcher')}, not 200 alone")
    if p.get("HealthCheckEnabled") not in (None, True, "true"):
        problems.append("health check disabled")
    if p.get("HealthCheckPort", "traffic-port") != "traffic-port" or p.get("Port") != CONTAINER_PORT:
        problems.append(f"health check or traffic not on the container port {CONTAINER_PORT}")
    if p.get("TargetType") != "ip":
        problems.append("target type is not ip (awsvpc tasks register by address)")
    services = of_type(cfn, "AWS::ECS::Service")
    for name, svc in services.items():
        lbs = props(svc).get("LoadBalancers", [])
        if [(lb.get("TargetGroupArn"), lb.get("ContainerPort")) for lb in lbs] != [({"Ref": "TargetGroup"}, CONTAINER_PORT)]:
            problems.append(f"{name}: not registered in TargetGroup on port {CONTAINER_PORT}")
    return problems


def check_task_definition(cfn: dict) -> list[str]:
    problems = []
    source = cfn["_source"]
    tds = of_type(cfn, "AWS::ECS::TaskDefinition")
    if len(tds) != 1:
        return [f"expected one task definition, found {sorted(tds)}"]
    p = props(next(iter(tds.values())))
    if p.get("NetworkMode") != "awsvpc" or p.get("RequiresCompatibilities") != ["FARGATE"]:
        problems.append("task definition is not awsvpc on Fargate")
    arch = source["Parameters"].get("CpuArchitecture", {})
    if p.get("RuntimePlatform", {}).get("CpuArchitecture") != cfn["_params"].get("CpuArchitecture") or set(
        arch.get("AllowedValues", [])
    ) != {"ARM64", "X86_64"}:
        problems.append("CPU architecture is not the CpuArchitecture parameter (ARM64 | X86_64)")
    if p.get("TaskRoleArn") != {"Fn::GetAtt": ["TaskRole", "Arn"]}:
        problems.append("tasks do not run as TaskRole")
    if p.get("ExecutionRoleArn") != {"Fn::GetAtt": ["ExecutionRole", "Arn"]}:
        problems.append("tasks are not started with ExecutionRole")
    c = task_container(cfn)
    if not c:
        return problems + ["expected exactly one container"]
    user = str(c.get("User", ""))
    if not user or user.split(":")[0] in ("0", "root"):
        problems.append(f"container user {user!r} is root or unset")
    if c.get("Privileged") not in (None, False, "false"):
        problems.append("container is privileged")
    if c.get("ReadonlyRootFilesystem") not in (True, "true"):
        problems.append("container root filesystem is writable")
    if "ALL" not in c.get("LinuxParameters", {}).get("Capabilities", {}).get("Drop", []):
        problems.append("container keeps its Linux capabilities")
    if c.get("Command") not in (None, ["serve", "--listen", f"0.0.0.0:{CONTAINER_PORT}"]):
        problems.append(f"container command {c.get('Command')} is not `serve --listen 0.0.0.0:{CONTAINER_PORT}`")
    ports = [(m.get("ContainerPort"), m.get("Protocol", "tcp")) for m in c.get("PortMappings", [])]
    if ports != [(CONTAINER_PORT, "tcp")]:
        problems.append(f"container ports {ports}, not {CONTAINER_PORT}/tcp alone")
    logs = c.get("LogConfiguration", {})
    if logs.get("LogDriver") != "awslogs" or logs.get("Options", {}).get("awslogs-group") != {"Ref": "LogGroup"}:
        problems.append("container does not log to LogGroup")
    for name, group in of_type(cfn, "AWS::Logs::LogGroup").items():
        if not props(group).get("RetentionInDays"):
            problems.append(f"{name}: log group without retention")
    if c.get("Secrets"):
        problems.append("container takes secrets (the service needs none)")
    return problems


def check_environment(cfn: dict) -> list[str]:
    """The task gets the function's settings (template.yaml), plus VENDING_TRUSTED_PROXIES
    set to the load balancer's subnets."""
    problems = []
    env = env_of(task_container(cfn))
    function_env = props(load_template(LAMBDA_TEMPLATE)["Resources"]["Function"])["Environment"]["Variables"]
    for name, value in function_env.items():
        if name in LAMBDA_ONLY_ENV:
            continue
        if name not in env:
            problems.append(f"{name} is set for the function but not for the task")
        elif isinstance(value, str) and env[name] != value:
            problems.append(f"{name} is {env[name]!r} for the task but {value!r} for the function")
        elif isinstance(value, dict) and "Ref" in value and value["Ref"] in cfn["_params"]:
            if env[name] != cfn["_params"][value["Ref"]]:
                problems.append(f"{name} is {env[name]!r}, not the {value['Ref']} parameter")
    clients = cfn["_params"]["ClientCidrs"]
    if env.get("VENDING_DEFAULT_ALLOWED_CIDRS") != clients:
        problems.append(f"VENDING_DEFAULT_ALLOWED_CIDRS is {env.get('VENDING_DEFAULT_ALLOWED_CIDRS')!r}, not ClientCidrs {clients}")
    want = cfn["_params"]["LoadBalancerSubnetCidrs"]
    if env.get("VENDING_TRUSTED_PROXIES") != want:
        problems.append(f"VENDING_TRUSTED_PROXIES is {env.get('VENDING_TRUSTED_PROXIES')!r}, not the load balancer subnets {want}")
    if env.get("VENDING_LOG_FORMAT") != "json":
        problems.append("logs are not JSON lines")
    if "AWS_REGION" not in env:
        problems.append("AWS_REGION is not set")
    for name in env:
        if SECRET_NAMES.search(name):
            problems.append(f"environment carries a secret-looking {name}")
    return problems


def check_task_role_mirrors_function(source: dict) -> list[str]:
    """The task role holds exactly the function's statements (less Logs), Sid by Sid."""
    lam = load_template(LAMBDA_TEMPLATE)
    lam_cfn = {"Resources": lam["Resources"]}
    ecs_cfn = {"Resources": source["Resources"]}
    want = {
        st.get("Sid"): normalized(st)
        for _, st in role_statements(lam_cfn, "FunctionRole")
        if st.get("Sid") not in LAMBDA_ONLY_SIDS
    }
    got = {st.get("Sid"): normalized(st) for _, st in role_statements(ecs_cfn, "TaskRole")}
    problems = []
    for sid in sorted(set(want) | set(got)):
        if sid not in got:
            problems.append(f"TaskRole lacks the function's statement {sid}")
        elif sid not in want:
            problems.append(f"TaskRole has {sid}, which the function does not")
        elif got[sid] != want[sid]:
            problems.append(f"TaskRole statement {sid} differs from the function's: {got[sid]} != {want[sid]}")
    if props(source["Resources"].get("TaskRole", {})).get("ManagedPolicyArns"):
        problems.append("TaskRole has managed policies")
    return problems


def check_least_privilege(cfn: dict) -> list[str]:
    problems = []
    prefix = "parameter${ParameterPrefix}/pools"
    res = cfn["Resources"]
    for role in of_type(cfn, "AWS::IAM::Role"):
        for pol, st in role_statements(cfn, role):
            if st.get("Effect") != "Allow":
                continue
            sid = f"{pol}/{st.get('Sid', '?')}"
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
            if "*" in resources:
                extra = set(actions) - WILDCARD_RESOURCE_ACTIONS
                if extra:
                    problems.append(f"{sid}: {sorted(extra)} on Resource '*'")
                cond = st.get("Condition", {})
                tagged = cond.get("Null", {}).get(f"aws:RequestTag/{POOL_TAG_KEY}") in ("false", False) or as_list(
                    cond.get("ForAllValues:StringEquals", {}).get("aws:TagKeys")
                ) == [POOL_TAG_KEY]
                for action in set(actions) & POOL_TAGGED_ACTIONS:
                    if not tagged:
                        problems.append(f"{sid}: {action} on '*' without requiring the pool tag {POOL_TAG_KEY}")
            for action in actions:
                if action == "ssm:DeregisterManagedInstance":
                    tag = st.get("Condition", {}).get("StringLike", {}).get(f"ssm:resourceTag/{POOL_TAG_KEY}")
                    if tag != "?*" or not all(":managed-instance/" in json.dumps(r) for r in resources):
                        problems.append(f"{sid}: {action} reaches nodes that carry no pool tag")
                elif action.startswith("ssm:") and action not in WILDCARD_RESOURCE_ACTIONS:
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
                if action.startswith("ecr:") and action != "ecr:GetAuthorizationToken":
                    if len(resources) != 1 or "repository/${ImageRepository}" not in json.dumps(resources[0]):
                        problems.append(f"{sid}: {action} on {resources}, not the image's repository")
                if action.startswith("logs:") and resources != [{"Fn::GetAtt": ["LogGroup", "Arn"]}]:
                    problems.append(f"{sid}: {action} on {resources}, not the log group")
                if action == "ecs:RunTask":
                    if resources != [{"Ref": "TaskDefinition"}]:
                        problems.append(f"{sid}: ecs:RunTask on {resources}, not the task definition")
                    if st.get("Condition", {}).get("ArnEquals", {}).get("ecs:cluster") != {"Fn::GetAtt": ["Cluster", "Arn"]}:
                        problems.append(f"{sid}: ecs:RunTask not limited to the stack's cluster")
                if action == "iam:PassRole":
                    passed = st.get("Condition", {}).get("StringEquals", {}).get("iam:PassedToService")
                    if role == "TaskRole":
                        instance_role = (
                            {"Fn::GetAtt": ["ManagedInstanceRole", "Arn"]}
                            if "ManagedInstanceRole" in res
                            else {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${ExistingInstanceRoleName}"}
                        )
                        if passed != "ssm.amazonaws.com":
                            problems.append(f"{sid}: iam:PassRole without iam:PassedToService ssm.amazonaws.com")
                        if not resources or resources[0] != instance_role:
                            problems.append(f"{sid}: iam:PassRole on {resources}, not the managed-instance role first")
                        names = set(cfn["_params"].get("PoolRoleNames", "").split(","))
                        for r in resources[1:]:
                            # A PoolRoleNames entry: arn:...:role/${Role}, Role selected from the list.
                            sub = r.get("Fn::Sub") if isinstance(r, dict) else None
                            pick = sub[1].get("Role") if isinstance(sub, list) and isinstance(sub[1], dict) else None
                            split = pick.get("Fn::Select", [None, {}])[1] if isinstance(pick, dict) else {}
                            listed = split.get("Fn::Split", [",", "*"])[1] if isinstance(split, dict) else "*"
                            listed_only = (
                                isinstance(sub, list)
                                and sub[0] == "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${Role}"
                                and isinstance(listed, str)
                                and set(listed.split(",")) <= names
                            )
                            if not listed_only:
                                problems.append(f"{sid}: iam:PassRole on {r}, neither the managed-instance role nor a PoolRoleNames entry")
                    else:
                        allowed = [{"Fn::GetAtt": ["TaskRole", "Arn"]}, {"Fn::GetAtt": ["ExecutionRole", "Arn"]}]
                        if passed != "ecs-tasks.amazonaws.com":
                            problems.append(f"{sid}: iam:PassRole without iam:PassedToService ecs-tasks.amazonaws.com")
                        if any(r not in allowed for r in resources):
                            problems.append(f"{sid}: iam:PassRole on {resources}, not the task's own roles")
        p = props(res[role])
        for arn in p.get("ManagedPolicyArns", []):
            if role != "ManagedInstanceRole" or "policy/AmazonSSMManagedInstanceCore" not in json.dumps(arn):
                problems.append(f"{role}: managed policy {json.dumps(arn)} is not allowed")
        for st in as_list(p.get("AssumeRolePolicyDocument", {}).get("Statement")):
            principal = st.get("Principal", {})
            if principal_is_everyone(principal) or not isinstance(principal, dict) or set(principal) != {"Service"}:
                problems.append(f"{role}: trusted by {principal}, not one AWS service")
    trust = as_list(props(res.get("TaskRole", {})).get("AssumeRolePolicyDocument", {}).get("Statement"))
    if [st.get("Principal") for st in trust] != [{"Service": "ecs-tasks.amazonaws.com"}]:
        problems.append("TaskRole is not trusted by ecs-tasks.amazonaws.com alone")
    for st in trust:
        if st.get("Condition", {}).get("StringEquals", {}).get("aws:SourceAccount") != {"Ref": "AWS::AccountId"}:
            problems.append("TaskRole trust is not limited by aws:SourceAccount")
    return problems


def check_server_limits(cfn: dict) -> list[str]:
    """`vending serve` exits within VENDING_SHUTDOWN_GRACE, before ECS's SIGKILL at
    StopTimeout; it keeps idle connections longer than the load balancer does (or the
    load balancer sends on connections the task just closed: 502s); slow heads and
    connections are bounded."""
    problems = []
    c = task_container(cfn)
    env = env_of(c)
    try:
        grace = duration_secs(env.get("VENDING_SHUTDOWN_GRACE", "20s"))
        idle = duration_secs(env.get("VENDING_IDLE_TIMEOUT", "60s"))
        header = duration_secs(env.get("VENDING_HEADER_TIMEOUT", "10s"))
    except ValueError as err:
        return [str(err)]
    stop = c.get("StopTimeout")
    if not isinstance(stop, int) or not grace < stop:
        problems.append(f"VENDING_SHUTDOWN_GRACE {grace}s is not below StopTimeout {stop!r}: SIGKILL would cut the clean stop")
    if not idle > ALB_IDLE_TIMEOUT_SECS:
        problems.append(f"VENDING_IDLE_TIMEOUT {idle}s is not above the load balancer's {ALB_IDLE_TIMEOUT_SECS}s idle timeout")
    if not header <= 30:
        problems.append(f"VENDING_HEADER_TIMEOUT {header}s lets slow heads hold connections")
    cap = env.get("VENDING_MAX_CONNECTIONS", "1024")
    if not str(cap).isdigit() or not 1 <= int(cap) <= 4096:
        problems.append(f"VENDING_MAX_CONNECTIONS {cap!r} is not a cap a 512 MiB task survives")
    return problems


def check_untrusted_config_alarm(cfn: dict) -> list[str]:
    """A pool config written by someone PoolConfigWriters does not name raises an alarm.
    The awslogs driver does not mark EMF lines, so a metric filter must count them."""
    filters = [
        props(f)
        for f in of_type(cfn, "AWS::Logs::MetricFilter").values()
        if props(f).get("LogGroupName") == {"Ref": "LogGroup"} and "PoolConfigUntrusted" in str(props(f).get("FilterPattern"))
    ]
    if not filters:
        return ["no metric filter counts PoolConfigUntrusted in the service's log group"]
    metrics = {
        json.dumps([t.get("MetricNamespace"), t.get("MetricName")]) for f in filters for t in f.get("MetricTransformations", [])
    }
    for name, alarm in of_type(cfn, "AWS::CloudWatch::Alarm").items():
        p = props(alarm)
        if json.dumps([p.get("Namespace"), p.get("MetricName")]) in metrics:
            fires = p.get("ComparisonOperator") == "GreaterThanThreshold" and p.get("Threshold") == 0
            topic = cfn["_params"].get("AlarmTopicArn", "")
            if not fires:
                return [f"{name}: does not fire on one untrusted config"]
            if p.get("AlarmActions", []) != ([topic] if topic else []):
                return [f"{name}: AlarmActions {p.get('AlarmActions')} (AlarmTopicArn {topic!r})"]
            return []
    return ["no alarm on the PoolConfigUntrusted metric filter"]


def duration_secs(text) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = str(text).strip()
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def check_key(cfn: dict) -> list[str]:
    problems = []
    res = cfn["Resources"]
    if "Key" not in res:
        return problems  # an existing key is the operator's
    p = props(res["Key"])
    if p.get("EnableKeyRotation") not in (True, "true"):
        problems.append("KMS key rotation is off")
    for st in as_list(p.get("KeyPolicy", {}).get("Statement")):
        if st.get("Effect") != "Allow":
            continue
        if principal_is_everyone(st.get("Principal")):
            problems.append(f"key policy statement {st.get('Sid')} allows everyone")
        actions = as_list(st.get("Action"))
        uses = [a for a in KMS_USE_ACTIONS if any(fnmatch.fnmatchcase(a, pat) for pat in actions)]
        if not uses:
            continue
        if st.get("Principal") != {"AWS": {"Fn::GetAtt": ["TaskRole", "Arn"]}}:
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
    table = props(res.get("Table", {}))
    if table.get("SSESpecification", {}).get("SSEEnabled") not in (True, "true"):
        problems.append("table has no KMS server-side encryption")
    if table.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") not in (True, "true"):
        problems.append("table has no point-in-time recovery")
    return problems


def check_dockerfile(text: str) -> list[str]:
    """Multi-stage, minimal non-root runtime, `vending serve --listen 0.0.0.0:8080`,
    a static binary, no secret baked in."""
    problems = []
    stages = dockerfile_stages(text)
    if len(stages) < 2:
        return ["the Dockerfile is not multi-stage"]
    final = stages[-1]
    base = final[0][1].split()[0]
    if not (base == "scratch" or base.startswith("gcr.io/distroless/static")):
        problems.append(f"runtime base {base} is not distroless/static or scratch")
    users = [arg for word, arg in final if word == "USER"]
    if not users:
        problems.append("the runtime stage sets no USER (it would run as root)")
    elif users[-1].split(":")[0] in ("0", "root", ""):
        problems.append(f"the runtime stage runs as {users[-1]!r}")
    copies = [arg for word, arg in final if word in ("COPY", "ADD")]
    if any("--from=" not in arg for arg in copies):
        problems.append(f"the runtime stage copies from the build context: {copies}")
    entry = [json.loads(arg) for word, arg in final if word == "ENTRYPOINT"]
    cmd = [json.loads(arg) for word, arg in final if word == "CMD"]
    argv = (entry[-1] if entry else []) + (cmd[-1] if cmd else [])
    if not argv or [Path(argv[0]).name] + argv[1:] != ["vending", "serve", "--listen", f"0.0.0.0:{CONTAINER_PORT}"]:
        problems.append(f"the image runs {argv}, not `vending serve --listen 0.0.0.0:{CONTAINER_PORT}`")
    for stage in stages:
        for word, arg in stage:
            if word in ("ENV", "ARG", "LABEL") and SECRET_NAMES.search(arg):
                problems.append(f"{word} {arg} looks like a secret baked into the image")
    build = " ".join(arg for stage in stages[:-1] for word, arg in stage if word == "RUN")
    if "+crt-static" not in build or "cargo build --release --locked" not in build:
        problems.append("the build stage does not build a static release binary (+crt-static)")
    return problems


def cargo_static_command(text: str) -> list[str]:
    """The cargo arguments of the static build, from the Dockerfile or the Makefile."""
    m = re.search(r"RUSTFLAGS='([^']*)'.*?cargo build ([^&\n]*)", re.sub(r"\\\n", " ", text), re.S)
    if not m:
        return []
    args = [a for a in shlex.split(m.group(2)) if not a.startswith(("$", '"$'))]
    return [m.group(1)] + sorted(a for a in args if a.startswith("-") or a == "vending")


# ------------------------------------------------------------------ tests


source, cfn = template_fixtures(ECS_TEMPLATE, SCENARIOS, deployed)


DEPLOYED_CHECKS = [
    check_internal_load_balancer,
    check_https_listener,
    check_client_ingress,
    check_tasks_reachable_from_load_balancer_only,
    check_health_check,
    check_task_definition,
    check_environment,
    check_least_privilege,
    check_region_bound,
    check_key,
    check_server_limits,
    check_untrusted_config_alarm,
]
SOURCE_CHECKS = [check_task_role_mirrors_function, check_client_cidr_rule, check_client_cidr_prefix_bound]


@pytest.mark.parametrize("check", DEPLOYED_CHECKS, ids=lambda c: c.__name__)
def test_deployed_template_holds(check, cfn):
    assert check(cfn) == []


@pytest.mark.parametrize("check", SOURCE_CHECKS, ids=lambda c: c.__name__)
def test_source_template_holds(check, source):
    assert check(source) == []


def test_dockerfile_holds():
    assert check_dockerfile(DOCKERFILE.read_text()) == []


def test_each_client_cidr_gets_its_own_rule(source):
    cfn = deployed(source, SCENARIOS["creates-key-and-role"])
    cidrs = sorted(r["CidrIp"] for r in ingress_rules(cfn, "LoadBalancerSecurityGroup"))
    assert cidrs == sorted(CLIENT_CIDRS.split(","))


def test_bringing_key_and_role_creates_neither(source):
    res = deployed(source, SCENARIOS["brings-key-and-role"])["Resources"]
    assert "Key" not in res and "ManagedInstanceRole" not in res
    env = env_of(task_container({"Resources": res}))
    assert env["VENDING_INSTANCE_ROLE"] == "OnPremServers"
    assert env["VENDING_KMS_KEY_ID"] == SCENARIOS["brings-key-and-role"]["ExistingKmsKeyArn"]


def test_dockerfile_and_make_static_build_alike():
    """CI checks the binary `make static` builds; the image must be built the same way."""
    docker = cargo_static_command(DOCKERFILE.read_text())
    make = cargo_static_command(MAKEFILE.read_text())
    assert docker, "no static cargo build in the Dockerfile"
    assert docker == make, f"Dockerfile builds {docker}, make static {make}"


# What CI may change of the release build it checks (.ci/run): how hard it optimises,
# never what it builds (target, RUSTFLAGS, features, the profile's panic and strip).
CI_PROFILE_OVERRIDES = {"LTO", "CODEGEN_UNITS", "OPT_LEVEL", "DEBUG"}


def ci_cargo_overrides(text: str) -> dict[str, str]:
    """The CARGO_* and RUSTFLAGS settings a shell script exports."""
    return dict(re.findall(r"^\s*export\s+((?:CARGO_|RUSTFLAGS)[A-Z_]*)=(\S*)", text, re.M))


def test_ci_release_build_differs_from_the_shipped_one_only_in_optimisation():
    """CI builds the static binary without LTO (issue 20): what it checks is still what
    ships, built from the same command with the same target, flags and features."""
    exported = ci_cargo_overrides((ROOT / ".ci" / "run").read_text())
    profile = {k.removeprefix("CARGO_PROFILE_RELEASE_") for k in exported if k.startswith("CARGO_PROFILE_")}
    assert profile <= CI_PROFILE_OVERRIDES, f".ci/run overrides release profile keys {profile - CI_PROFILE_OVERRIDES}"
    others = {k for k in exported if not k.startswith("CARGO_PROFILE_RELEASE_")}
    assert others <= {"CARGO_TERM_COLOR", "CARGO_INCREMENTAL"}, f".ci/run changes the build with {others}"
    assert not ci_cargo_overrides(DOCKERFILE.read_text()), "the image's build must keep the shipped profile"
    assert "CARGO_PROFILE_" not in MAKEFILE.read_text(), "make static must keep the shipped profile"


def test_ci_override_check_can_fail():
    text = "export CARGO_PROFILE_RELEASE_PANIC=unwind\nexport RUSTFLAGS=-Ctarget-cpu=native\n"
    found = ci_cargo_overrides(text)
    assert found == {"CARGO_PROFILE_RELEASE_PANIC": "unwind", "RUSTFLAGS": "-Ctarget-cpu=native"}


def test_dockerignore_keeps_secrets_and_state_out():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore must start from an empty context (allowlist)"
    for allowed in rules[1:]:
        assert allowed.startswith("!") or allowed.endswith("target"), f"unexpected rule {allowed}"
        assert not re.search(r"\.env|\.aws|\.venv|\.local|\.git|samconfig", allowed), f"{allowed} lets state or credentials in"


# ------------------------------------------------------------------ mutations


def _p(t, name):
    return t["Resources"][name]["Properties"]


def _task_statements(t):
    return _p(t, "TaskRole")["Policies"][0]["PolicyDocument"]["Statement"]


def _stmt(statements, sid):
    return next(s for s in statements if s.get("Sid") == sid)


def _container(t):
    return _p(t, "TaskDefinition")["ContainerDefinitions"][0]


def _env(t, name):
    return next(e for e in _container(t)["Environment"] if e["Name"] == name)


def m_internet_facing(t):
    _p(t, "LoadBalancer")["Scheme"] = "internet-facing"


def m_http_listener(t):
    t["Resources"]["PlainListener"] = {
        "Type": "AWS::ElasticLoadBalancingV2::Listener",
        "Properties": {
            "LoadBalancerArn": {"Ref": "LoadBalancer"},
            "Protocol": "HTTP",
            "Port": 80,
            "DefaultActions": [{"Type": "forward", "TargetGroupArn": {"Ref": "TargetGroup"}}],
        },
    }


def m_weak_tls(t):
    _p(t, "Listener")["SslPolicy"] = "ELBSecurityPolicy-2016-08"


def m_world_ingress(t):
    t["Resources"]["Fn::ForEach::ClientIngress"][2]["ClientIngress&{Cidr}"]["Properties"]["CidrIp"] = "0.0.0.0/0"


def m_ssh_ingress(t):
    _p(t, "LoadBalancerSecurityGroup")["SecurityGroupIngress"] = [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "10.20.0.0/16"}
    ]


def m_all_ports(t):
    fragment = t["Resources"]["Fn::ForEach::ClientIngress"][2]["ClientIngress&{Cidr}"]["Properties"]
    fragment["FromPort"], fragment["ToPort"] = 0, 65535


def m_tasks_from_vpc(t):
    _p(t, "ServiceSecurityGroup")["SecurityGroupIngress"] = [
        {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "CidrIp": "10.0.0.0/8"}
    ]


def m_public_ip(t):
    _p(t, "Service")["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] = "ENABLED"


def m_cidrs_any_prefix(t):
    del t["Parameters"]["ClientCidrs"]["AllowedPattern"]


def m_region_free(role, sid):
    def mutate(t):
        statements = [st for pol in _p(t, role)["Policies"] for st in pol["PolicyDocument"]["Statement"]]
        if role == "TaskRole":
            statements += _p(t, "TaskKeyPolicy")["PolicyDocument"]["Statement"]
        del _stmt(statements, sid)["Condition"]["StringEquals"]["aws:RequestedRegion"]

    return mutate


def m_tag_deny_this_region(t):
    st = _stmt(_task_statements(t), "NeverTagExistingResources")
    st["Resource"] = [{"Fn::Sub": r["Fn::Sub"].replace(":*:", ":${AWS::Region}:", 1)} for r in st["Resource"]]


def m_drop_cidr_rule(t):
    del t["Rules"]["ClientCidrsAreNotTheWorld"]


def m_health_root(t):
    _p(t, "TargetGroup")["HealthCheckPath"] = "/"


def m_health_any_code(t):
    _p(t, "TargetGroup")["Matcher"] = {"HttpCode": "200-499"}


def m_root_user(t):
    _container(t)["User"] = "0"


def m_privileged(t):
    _container(t)["Privileged"] = True


def m_writable_root(t):
    _container(t)["ReadonlyRootFilesystem"] = False


def m_fixed_arch(t):
    _p(t, "TaskDefinition")["RuntimePlatform"]["CpuArchitecture"] = "X86_64"


def m_no_retention(t):
    del _p(t, "LogGroup")["RetentionInDays"]


def m_trust_everyone_as_proxy(t):
    _env(t, "VENDING_TRUSTED_PROXIES")["Value"] = "0.0.0.0/0"


def m_drop_table_env(t):
    _container(t)["Environment"] = [e for e in _container(t)["Environment"] if e["Name"] != "VENDING_TABLE"]


def m_secret_env(t):
    _container(t)["Environment"].append({"Name": "AWS_SECRET_ACCESS_KEY", "Value": "x"})


def m_ssm_star(t):
    _stmt(_task_statements(t), "PoolParameters")["Action"] = "ssm:*"


def m_parameters_everywhere(t):
    _stmt(_task_statements(t), "PoolParameters")["Resource"] = {
        "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/*"
    }


def m_passrole_unconditioned(t):
    del _stmt(_task_statements(t), "PassOnlyThePoolRolesToSsm")["Condition"]


def m_passrole_any_role(t):
    _stmt(_task_statements(t), "PassOnlyThePoolRolesToSsm")["Resource"] = "*"


def m_passrole_any_pool_role(t):
    st = _stmt(_task_statements(t), "PassOnlyThePoolRolesToSsm")
    st["Resource"]["Fn::If"][1].append({"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/*"})


def m_tagging_unlimited(t):
    del _stmt(_task_statements(t), "TagActivationsWithThePoolTag")["Condition"]


def m_create_untagged(t):
    del _stmt(_task_statements(t), "CreateActivationsThatCarryThePoolTag")["Condition"]


def m_deregister_any_node(t):
    del _stmt(_task_statements(t), "DeregisterOnlyPoolNodes")["Condition"]


def m_table_query(t):
    _stmt(_task_statements(t), "PoolTable")["Action"].append("dynamodb:Query")


def m_wildcard_s3(t):
    _task_statements(t).append({"Sid": "Extra", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"})


def m_admin_policy(t):
    _p(t, "TaskRole")["ManagedPolicyArns"] = ["arn:aws:iam::aws:policy/AdministratorAccess"]


def m_kms_without_via(t):
    del _p(t, "TaskKeyPolicy")["PolicyDocument"]["Statement"][0]["Condition"]


def m_drop_delete_activation(t):
    _stmt(_task_statements(t), "ActivationsAdmitNoResource")["Action"].remove("ssm:DeleteActivation")


def m_task_trust_without_source_account(t):
    del _p(t, "TaskRole")["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]


def m_ecr_everywhere(t):
    st = _stmt(_p(t, "ExecutionRole")["Policies"][0]["PolicyDocument"]["Statement"], "PullTheImage")
    st["Resource"] = "*"


def m_sweep_any_task(t):
    st = _stmt(_p(t, "SweepRole")["Policies"][0]["PolicyDocument"]["Statement"], "RunTheSweepTask")
    st["Resource"] = "*"


def m_key_open_to_all(t):
    _p(t, "Key")["KeyPolicy"]["Statement"].append(
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"}
    )


def m_key_admin_can_decrypt(t):
    _p(t, "Key")["KeyPolicy"]["Statement"][0]["Action"] = "kms:*"


def m_stop_before_the_grace(t):
    _container(t)["StopTimeout"] = 15


def m_idle_below_the_load_balancer(t):
    _env(t, "VENDING_IDLE_TIMEOUT")["Value"] = "30s"


def m_open_default_pool(t):
    _container(t)["Environment"] = [e for e in _container(t)["Environment"] if e["Name"] != "VENDING_DEFAULT_ALLOWED_CIDRS"]


def m_key_for_any_parameter(t):
    del _stmt(_p(t, "Key")["KeyPolicy"]["Statement"], "TasksUseThroughParameterStoreOnly")["Condition"]["StringLike"]


def m_role_key_for_any_parameter(t):
    del _stmt(_p(t, "TaskKeyPolicy")["PolicyDocument"]["Statement"], "KeyThroughParameterStoreOnly")["Condition"]["StringLike"]


def m_key_sealing_under_any_context_key(t):
    del _stmt(_p(t, "Key")["KeyPolicy"]["Statement"], "TasksSealCodesForThisDeploymentsPoolsOnly")["Condition"]["ForAllValues:StringEquals"]


def m_role_sealing_for_any_deployment(t):
    statement = _stmt(_p(t, "TaskKeyPolicy")["PolicyDocument"]["Statement"], "SealCodesForThisDeploymentsPoolsOnly")
    del statement["Condition"]["StringEquals"]["kms:EncryptionContext:activation-vending:deployment"]


def m_no_untrusted_metric(t):
    del t["Resources"]["PoolConfigUntrustedMetric"]


def m_untrusted_alarm_silent(t):
    _p(t, "PoolConfigUntrustedAlarm")["AlarmActions"] = []


MUTATIONS = [
    ("internet-facing load balancer", m_internet_facing, check_internal_load_balancer, "creates-key-and-role"),
    ("plain HTTP listener", m_http_listener, check_https_listener, "creates-key-and-role"),
    ("TLS 1.0 policy", m_weak_tls, check_https_listener, "brings-key-and-role"),
    ("client ingress from 0.0.0.0/0", m_world_ingress, check_client_ingress, "creates-key-and-role"),
    ("ssh on the load balancer", m_ssh_ingress, check_client_ingress, "brings-key-and-role"),
    ("every port from the clients", m_all_ports, check_client_ingress, "creates-key-and-role"),
    ("no rule against 0.0.0.0/0", m_drop_cidr_rule, check_client_cidr_rule, "source"),
    ("ClientCidrs 0.0.0.0/1 admitted", m_cidrs_any_prefix, check_client_cidr_prefix_bound, "source"),
    ("CreateActivation in every Region", m_region_free("TaskRole", "CreateActivationsThatCarryThePoolTag"), check_region_bound, "creates-key-and-role"),
    ("tagging in every Region", m_region_free("TaskRole", "TagActivationsWithThePoolTag"), check_region_bound, "creates-key-and-role"),
    ("DeleteActivation in every Region", m_region_free("TaskRole", "ActivationsAdmitNoResource"), check_region_bound, "creates-key-and-role"),
    ("PassRole in every Region", m_region_free("TaskRole", "PassOnlyThePoolRolesToSsm"), check_region_bound, "pool-roles"),
    ("the key in every Region", m_region_free("TaskRole", "KeyThroughParameterStoreOnly"), check_region_bound, "brings-key-and-role"),
    ("ECR token in every Region", m_region_free("ExecutionRole", "EcrTokenAdmitsNoResource"), check_region_bound, "creates-key-and-role"),
    ("sweep PassRole in every Region", m_region_free("SweepRole", "PassTheTaskRoles"), check_region_bound, "creates-key-and-role"),
    ("tag deny in the stack's Region only", m_tag_deny_this_region, check_region_bound, "creates-key-and-role"),
    ("tasks reachable from the VPC", m_tasks_from_vpc, check_tasks_reachable_from_load_balancer_only, "creates-key-and-role"),
    ("tasks with a public IP", m_public_ip, check_tasks_reachable_from_load_balancer_only, "creates-key-and-role"),
    ("health check on /", m_health_root, check_health_check, "creates-key-and-role"),
    ("health check accepts 4xx", m_health_any_code, check_health_check, "creates-key-and-role"),
    ("container as root", m_root_user, check_task_definition, "creates-key-and-role"),
    ("privileged container", m_privileged, check_task_definition, "creates-key-and-role"),
    ("writable root filesystem", m_writable_root, check_task_definition, "creates-key-and-role"),
    ("architecture fixed", m_fixed_arch, check_task_definition, "creates-key-and-role"),
    ("log group kept forever", m_no_retention, check_task_definition, "creates-key-and-role"),
    ("every address trusted as a proxy", m_trust_everyone_as_proxy, check_environment, "creates-key-and-role"),
    ("VENDING_TABLE missing", m_drop_table_env, check_environment, "creates-key-and-role"),
    ("a secret in the environment", m_secret_env, check_environment, "brings-key-and-role"),
    ("ssm:* on the path", m_ssm_star, check_least_privilege, "creates-key-and-role"),
    ("ssm:* on the path (mirror)", m_ssm_star, check_task_role_mirrors_function, "source"),
    ("every parameter", m_parameters_everywhere, check_least_privilege, "brings-key-and-role"),
    ("PassRole without PassedToService", m_passrole_unconditioned, check_least_privilege, "creates-key-and-role"),
    ("PassRole on any role", m_passrole_any_role, check_least_privilege, "brings-key-and-role"),
    ("PassRole on any role beside the pool roles", m_passrole_any_pool_role, check_least_privilege, "pool-roles"),
    ("tagging without the pool tag", m_tagging_unlimited, check_least_privilege, "creates-key-and-role"),
    ("activations without the pool tag", m_create_untagged, check_least_privilege, "brings-key-and-role"),
    ("deregistering any node", m_deregister_any_node, check_least_privilege, "creates-key-and-role"),
    ("table query (mirror)", m_table_query, check_task_role_mirrors_function, "source"),
    ("s3:GetObject on *", m_wildcard_s3, check_least_privilege, "creates-key-and-role"),
    ("s3:GetObject on * (mirror)", m_wildcard_s3, check_task_role_mirrors_function, "source"),
    ("AdministratorAccess on the task role", m_admin_policy, check_least_privilege, "creates-key-and-role"),
    ("key use without kms:ViaService", m_kms_without_via, check_least_privilege, "brings-key-and-role"),
    ("key use without kms:ViaService (mirror)", m_kms_without_via, check_task_role_mirrors_function, "source"),
    ("one action fewer than the function", m_drop_delete_activation, check_task_role_mirrors_function, "source"),
    ("task trust without source account", m_task_trust_without_source_account, check_least_privilege, "creates-key-and-role"),
    ("image pull from every repository", m_ecr_everywhere, check_least_privilege, "creates-key-and-role"),
    ("sweep rule runs any task", m_sweep_any_task, check_least_privilege, "creates-key-and-role"),
    ("key open to everyone", m_key_open_to_all, check_key, "creates-key-and-role"),
    ("key admin may decrypt", m_key_admin_can_decrypt, check_key, "creates-key-and-role"),
    ("SIGKILL before the grace ends", m_stop_before_the_grace, check_server_limits, "creates-key-and-role"),
    ("idle connections closed before the load balancer's", m_idle_below_the_load_balancer, check_server_limits, "creates-key-and-role"),
    ("implicit default pool open to all", m_open_default_pool, check_environment, "creates-key-and-role"),
    ("key usable for any parameter", m_key_for_any_parameter, check_key, "creates-key-and-role"),
    ("role may use the key for any parameter", m_role_key_for_any_parameter, check_least_privilege, "brings-key-and-role"),
    ("role may use the key for any parameter (mirror)", m_role_key_for_any_parameter, check_task_role_mirrors_function, "source"),
    ("sealed codes under any context key (key)", m_key_sealing_under_any_context_key, check_key, "creates-key-and-role"),
    ("sealed codes of any deployment (role)", m_role_sealing_for_any_deployment, check_least_privilege, "brings-key-and-role"),
    ("sealed codes of any deployment (mirror)", m_role_sealing_for_any_deployment, check_task_role_mirrors_function, "source"),
    ("no PoolConfigUntrusted metric filter", m_no_untrusted_metric, check_untrusted_config_alarm, "creates-key-and-role"),
    ("untrusted-config alarm silent with a topic", m_untrusted_alarm_silent, check_untrusted_config_alarm, "pool-roles"),
]


@pytest.mark.parametrize("mutate,check,where", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_weakening_is_caught(source, mutate, check, where):
    weakened = copy.deepcopy(source)
    mutate(weakened)
    target = weakened if where == "source" else deployed(weakened, SCENARIOS[where])
    original = source if where == "source" else deployed(source, SCENARIOS[where])
    assert check(original) == [], "the unmodified template must pass this check"
    assert check(target) != [], f"{check.__name__} did not notice the weakening"


DOCKERFILE_MUTATIONS = [
    ("no USER", lambda s: re.sub(r"^USER .*\n", "", s, flags=re.M)),
    ("USER root", lambda s: re.sub(r"^USER .*$", "USER root", s, flags=re.M)),
    ("USER 0:0", lambda s: re.sub(r"^USER .*$", "USER 0:0", s, flags=re.M)),
    ("full Debian runtime", lambda s: s.replace("gcr.io/distroless/static-debian12:nonroot", "debian:12")),
    ("listens on loopback", lambda s: s.replace('"0.0.0.0:8080"', '"127.0.0.1:8080"')),
    ("single stage", lambda s: s[s.index("FROM gcr.io") :]),
    ("dynamic binary", lambda s: s.replace("RUSTFLAGS='-C target-feature=+crt-static'", "RUSTFLAGS=''")),
    ("secret baked in", lambda s: s.replace("ENV VENDING_LOG_FORMAT=json", "ENV AWS_SECRET_ACCESS_KEY=abc")),
    ("copies the context into the runtime", lambda s: s.replace("USER 65532", "COPY . /app\nUSER 65532")),
]


@pytest.mark.parametrize("mutate", [m[1] for m in DOCKERFILE_MUTATIONS], ids=[m[0] for m in DOCKERFILE_MUTATIONS])
def test_dockerfile_weakening_is_caught(mutate):
    text = DOCKERFILE.read_text()
    weakened = mutate(text)
    assert weakened != text, "the mutation did not apply"
    assert check_dockerfile(text) == []
    assert check_dockerfile(weakened) != []


def test_the_deploy_page_describes_the_tagging_the_task_role_allows(source):
    """The ECS section of the deploy page (once the README's) says what tagging the task
    role allows (issue 18, item 8): keys limited to the pool tag only if the policy limits
    aws:TagKeys, else that tagging requests must carry the pool tag."""
    page = (ROOT / "docs" / "deploy.md").read_text()
    section = page.split("\n## Container", 1)[1].split("\n## ", 1)[0]
    prose = " ".join(section.split())
    tagging = _stmt(_task_statements(source), "TagActivationsWithThePoolTag")
    keys_limited = any("aws:TagKeys" in json.dumps(v) for v in tagging.get("Condition", {}).values())
    if keys_limited:
        assert "pool tag key only" in prose
    else:
        assert "pool tag key only" not in prose, "the README limits tagging to the pool tag key; the policy allows any key"
        assert "carry the pool tag" in prose
