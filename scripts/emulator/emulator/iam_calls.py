"""What IAM would be asked for each AWS call the service makes (issue 18, item 3).

The emulator does not enforce IAM, so a permission the deployed role lacks goes unseen in
every test. This module records, for each AWS call signed with the service's access key
(SERVICE_ACCESS_KEY_ID: what scripts/emulator/provision.py hands `vending`; the tests' own
provisioning and checks sign with other keys), the authorization requests AWS would
evaluate: the IAM action, the resource ARN and the request's context keys, resolved from
the request and the emulator's state as AWS resolves them. tests/iam/check.py evaluates
each against the templates' policies with a real policy evaluator.

Recording is on when EMULATOR_IAM_CALLS_DIR names a directory: each emulator process
appends JSON lines to DIR/emulator-<pid>.jsonl, each distinct record once. A line:

  {"operation": "DynamoDB.TransactWriteItems", "service": "dynamodb",
   "account": "123456789012", "region": "us-east-1",
   "table": "activation-vending" | null,      the DynamoDB table(s) of the call
   "parameter_prefix": "/activation-vending" | null,  what precedes /pools in a parameter
   "passed_roles": ["role-name", ...],         roles passed to SSM (CreateActivation)
   "kms_key_arn": "arn:aws:kms:...:key/..." | null,
   "requests": [{"action": "dynamodb:UpdateItem", "resource": "arn:aws:dynamodb:...",
                 "context": {"aws:RequestedRegion": "us-east-1", ...}}, ...]}

What each operation asks IAM (the Service Authorization Reference's model):
  * DynamoDB: the operation's action on the table ARN; BatchGetItem one request per table;
    TransactWriteItems/TransactGetItems have no action of their own: each item asks for
    PutItem / UpdateItem / DeleteItem / ConditionCheckItem / GetItem on its table.
    Context: dynamodb:LeadingKeys (the partition key values), dynamodb:Attributes when the
    request names attributes to return, dynamodb:ReturnValues, dynamodb:Select.
  * SSM parameters: the parameter ARN (a version or label selector dropped);
    GetParametersByPath the path's ARN with ssm:Recursive; PutParameter with ssm:Overwrite
    and the request's tags. A SecureString read with decryption (GetParameter,
    GetParameters, GetParametersByPath) also asks kms:Decrypt, a SecureString write
    kms:Encrypt, on the parameter's key, made by SSM on the caller's behalf:
    kms:ViaService ssm.REGION.amazonaws.com, kms:CallerAccount and
    kms:EncryptionContext:PARAMETER_ARN.
  * SSM CreateActivation: ssm:CreateActivation on "*" (no resource type) with
    aws:RequestTag/KEY and aws:TagKeys; with tags also ssm:AddTagsToResource on "*" with the
    same keys; iam:PassRole on the role with iam:PassedToService ssm.amazonaws.com.
    DeleteActivation, DescribeActivations, DescribeInstanceInformation, DescribeParameters:
    "*". DeregisterManagedInstance and the tagging calls on a node: the managed-instance
    ARN with the node's tags as ssm:resourceTag/KEY and aws:ResourceTag/KEY.
  * KMS: the key's ARN (an alias resolved to its key; a Decrypt that names none, the key
    its ciphertext names). A direct Encrypt or Decrypt also carries kms:CallerAccount,
    kms:EncryptionContext:KEY for each pair of its encryption context and
    kms:EncryptionContextKeys (the context's keys; both absent when it has none).
  * Anything else: SERVICE:Operation on "*", which the evaluator refuses for an action
    that needs a resource: an unmodelled call fails loudly instead of passing unseen.
Every request carries aws:RequestedRegion (the Region the call was signed for).
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

# The access key `vending` signs with in every test suite (provision.py prints it).
SERVICE_ACCESS_KEY_ID = "AKIAVENDINGSERVICE00"
CALLS_DIR_ENV = "EMULATOR_IAM_CALLS_DIR"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"

TRANSACT_WRITE_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}
SSM_NO_RESOURCE = {"DeleteActivation", "DescribeActivations", "DescribeInstanceInformation", "DescribeParameters"}
SSM_TAG_RESOURCE_TYPES = {"ManagedInstance": "managed-instance", "Parameter": "parameter", "Document": "document"}


class Recorder:
    """Appends each distinct record of the service's calls to DIR/emulator-<pid>.jsonl."""

    def __init__(self, directory: str | None) -> None:
        self.path = os.path.join(directory, f"emulator-{os.getpid()}.jsonl") if directory else None
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    @classmethod
    def from_env(cls) -> "Recorder":
        return cls(os.environ.get(CALLS_DIR_ENV) or None)

    def observe(self, environ: dict[str, Any], body: bytes, operation: str, state_lock: Any) -> None:
        """Records the call if the service signed it. `state_lock` guards moto's state
        (the parameter's key, a node's tags are read from it)."""
        if self.path is None:
            return
        scope = credential_scope(environ)
        if scope is None or scope[0] != SERVICE_ACCESS_KEY_ID:
            return
        _, region, service = scope
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        if not isinstance(request, dict):
            request = {}
        try:
            with state_lock:
                record = describe_call(operation, service, region, request)
        except Exception as err:  # never break the call; tests/iam/check.py fails on it
            record = {"operation": operation, "service": service, "region": region, "error": repr(err), "requests": []}
        line = json.dumps(record, sort_keys=True)
        with self.lock:
            if line in self.seen:
                return
            self.seen.add(line)
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(line + "\n")


def credential_scope(environ: dict[str, Any]) -> tuple[str, str, str] | None:
    """(access key, Region, service) of a SigV4-signed request."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = re.search(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request", auth)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def describe_call(operation: str, service: str, region: str, request: dict[str, Any]) -> dict[str, Any]:
    from moto.core import DEFAULT_ACCOUNT_ID  # moto's one account (imported late: provision.py needs none)

    account = DEFAULT_ACCOUNT_ID
    record: dict[str, Any] = {
        "operation": operation,
        "service": service,
        "account": account,
        "region": region,
        "table": None,
        "parameter_prefix": None,
        "passed_roles": [],
        "kms_key_arn": None,
        "requests": [],
    }
    name = operation.split(".", 1)[1] if "." in operation else operation
    if service == "dynamodb":
        _dynamodb(record, name, request)
    elif service == "ssm":
        _ssm(record, name, request)
    elif service == "kms":
        key = _key_arn(account, region, request.get("KeyId") or _ciphertext_key_id(request))
        record["kms_key_arn"] = key
        _ask(record, f"kms:{name}", key or "*", _kms_context(account, name, request))
    else:
        _ask(record, f"{service}:{name}", "*")
    for asked in record["requests"]:
        asked["context"]["aws:RequestedRegion"] = region
    return record


def _ask(record: dict[str, Any], action: str, resource: str, context: dict[str, Any] | None = None) -> None:
    record["requests"].append({"action": action, "resource": resource, "context": dict(context or {})})


# ------------------------------------------------------------------------- DynamoDB


def _table_arn(record: dict[str, Any], table: str) -> str:
    record["table"] = table
    return f"arn:{PARTITION}:dynamodb:{record['region']}:{record['account']}:table/{table}"


def _leading_keys(keys: list[Any]) -> list[str]:
    """Partition key values (the table's hash key is `pk`; any string or number key)."""
    values = []
    for key in keys:
        if not isinstance(key, dict):
            continue
        attr = key.get("pk")
        if isinstance(attr, dict):
            value = attr.get("S", attr.get("N"))
            if value is not None and value not in values:
                values.append(str(value))
    return values


def _item_context(item: dict[str, Any], keys: list[Any]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    leading = _leading_keys(keys)
    if leading:
        context["dynamodb:LeadingKeys"] = leading
    if item.get("ReturnValues"):
        context["dynamodb:ReturnValues"] = item["ReturnValues"]
    if item.get("Select"):
        context["dynamodb:Select"] = item["Select"]
    return context


def _dynamodb(record: dict[str, Any], name: str, request: dict[str, Any]) -> None:
    if name == "BatchGetItem":
        for table, spec in (request.get("RequestItems") or {}).items():
            _ask(record, "dynamodb:BatchGetItem", _table_arn(record, table), _item_context(spec, spec.get("Keys") or []))
        return
    if name == "BatchWriteItem":
        for table, writes in (request.get("RequestItems") or {}).items():
            for write in writes:
                if "PutRequest" in write:
                    _ask(record, "dynamodb:BatchWriteItem", _table_arn(record, table), _item_context({}, [write["PutRequest"].get("Item")]))
                elif "DeleteRequest" in write:
                    _ask(record, "dynamodb:BatchWriteItem", _table_arn(record, table), _item_context({}, [write["DeleteRequest"].get("Key")]))
        return
    if name == "TransactWriteItems":
        for entry in request.get("TransactItems") or []:
            for kind, item in entry.items():
                action = TRANSACT_WRITE_ACTIONS.get(kind, f"dynamodb:{kind}")
                key = item.get("Item") if kind == "Put" else item.get("Key")
                _ask(record, action, _table_arn(record, item.get("TableName", "")), _item_context(item, [key]))
        return
    if name == "TransactGetItems":
        for entry in request.get("TransactItems") or []:
            item = entry.get("Get") or {}
            _ask(record, "dynamodb:GetItem", _table_arn(record, item.get("TableName", "")), _item_context(item, [item.get("Key")]))
        return
    table = request.get("TableName")
    if not table:
        _ask(record, f"dynamodb:{name}", "*")
        return
    key = request.get("Item") if name == "PutItem" else request.get("Key")
    _ask(record, f"dynamodb:{name}", _table_arn(record, table), _item_context(request, [key] if key else []))


# ------------------------------------------------------------------------- SSM


def _ssm_backend(account: str, region: str) -> Any:
    from moto.ssm.models import ssm_backends

    return ssm_backends[account][region]


def _parameter_arn(record: dict[str, Any], name: str) -> str:
    name = name.split(":", 1)[0] if not name.startswith("arn:") else name.split(":parameter", 1)[1].split(":", 1)[0]
    if "/pools" in name and record["parameter_prefix"] is None:
        record["parameter_prefix"] = name[: name.index("/pools")] or None
    path = name if name.startswith("/") else "/" + name
    return f"arn:{PARTITION}:ssm:{record['region']}:{record['account']}:parameter{path}"


def _parameter_tags(record: dict[str, Any], name: str) -> dict[str, Any]:
    base = name.split(":", 1)[0]
    try:
        tags = _ssm_backend(record["account"], record["region"])._resource_tags.get("Parameter", {}).get(base, {})
    except KeyError:
        tags = {}
    return {f"aws:ResourceTag/{k}": v for k, v in tags.items()}


def _key_arn(account: str, region: str, key_id: Any) -> str | None:
    if not isinstance(key_id, str) or not key_id:
        return None
    from moto.kms.models import kms_backends

    try:
        return kms_backends[account][region].describe_key(key_id).arn
    except Exception:  # an unknown key or alias: AWS would refuse the call itself
        return None


def _ciphertext_key_id(request: dict[str, Any]) -> str | None:
    """The key a Decrypt's ciphertext names (moto's blob format), when the call names none."""
    blob = request.get("CiphertextBlob")
    if not isinstance(blob, str):
        return None
    import base64

    from moto.kms.utils import _deserialize_ciphertext_blob

    try:
        return _deserialize_ciphertext_blob(base64.b64decode(blob)).key_id
    except Exception:  # not a ciphertext: AWS refuses the call itself
        return None


def _kms_context(account: str, name: str, request: dict[str, Any]) -> dict[str, Any]:
    """The encryption context keys of a direct cryptographic call (Encrypt, Decrypt)."""
    if name not in ("Encrypt", "Decrypt", "GenerateDataKey"):
        return {}
    context = request.get("EncryptionContext") or {}
    asked: dict[str, Any] = {"kms:CallerAccount": account}
    if isinstance(context, dict) and context:
        for key, value in context.items():
            asked[f"kms:EncryptionContext:{key}"] = value
        asked["kms:EncryptionContextKeys"] = sorted(context)
    return asked


def _via_ssm(record: dict[str, Any], action: str, key_id: Any, parameter_arn: str) -> None:
    """kms:Encrypt / kms:Decrypt that SSM makes with the caller's credentials."""
    key = _key_arn(record["account"], record["region"], key_id or "alias/aws/ssm")
    record["kms_key_arn"] = key
    _ask(
        record,
        action,
        key or f"arn:{PARTITION}:kms:{record['region']}:{record['account']}:alias/aws/ssm",
        {
            "kms:ViaService": f"ssm.{record['region']}.{URL_SUFFIX}",
            "kms:CallerAccount": record["account"],
            "kms:EncryptionContext:PARAMETER_ARN": parameter_arn,
            "kms:EncryptionContextKeys": ["PARAMETER_ARN"],
        },
    )


def _stored_parameter(record: dict[str, Any], name: str) -> Any:
    try:
        return _ssm_backend(record["account"], record["region"]).get_parameter(name)
    except Exception:  # moto raises for malformed selectors; AWS answers an error too
        return None


def _tag_context(tags: list[Any]) -> dict[str, Any]:
    pairs = [(t.get("Key"), t.get("Value")) for t in tags if isinstance(t, dict)]
    context: dict[str, Any] = {f"aws:RequestTag/{k}": v for k, v in pairs}
    context["aws:TagKeys"] = [k for k, _ in pairs]
    return context


def _node_tag_context(record: dict[str, Any], instance_id: str) -> dict[str, Any]:
    try:
        tags = _ssm_backend(record["account"], record["region"])._resource_tags.get("ManagedInstance", {}).get(instance_id, {})
    except KeyError:
        tags = {}
    context: dict[str, Any] = {}
    for k, v in tags.items():
        context[f"ssm:resourceTag/{k}"] = v
        context[f"aws:ResourceTag/{k}"] = v
    return context


def _ssm(record: dict[str, Any], name: str, request: dict[str, Any]) -> None:
    region, account = record["region"], record["account"]
    if name in SSM_NO_RESOURCE:
        _ask(record, f"ssm:{name}", "*")
    elif name == "CreateActivation":
        tags = request.get("Tags") or []
        context = _tag_context(tags)
        _ask(record, "ssm:CreateActivation", "*", context)
        if tags:
            _ask(record, "ssm:AddTagsToResource", "*", context)
        role = request.get("IamRole")
        if isinstance(role, str) and role:
            record["passed_roles"].append(role)
            _ask(record, "iam:PassRole", f"arn:{PARTITION}:iam::{account}:role/{role}", {"iam:PassedToService": "ssm.amazonaws.com"})
    elif name == "DeregisterManagedInstance":
        instance = str(request.get("InstanceId", ""))
        arn = f"arn:{PARTITION}:ssm:{region}:{account}:managed-instance/{instance}"
        _ask(record, "ssm:DeregisterManagedInstance", arn, _node_tag_context(record, instance))
    elif name in ("AddTagsToResource", "RemoveTagsFromResource", "ListTagsForResource"):
        kind = SSM_TAG_RESOURCE_TYPES.get(str(request.get("ResourceType")), str(request.get("ResourceType", "")).lower())
        resource_id = str(request.get("ResourceId", ""))
        if kind == "parameter":
            arn = _parameter_arn(record, resource_id)
        else:
            arn = f"arn:{PARTITION}:ssm:{region}:{account}:{kind}/{resource_id}"
        context = _node_tag_context(record, resource_id) if kind == "managed-instance" else {}
        if name == "AddTagsToResource":
            context.update(_tag_context(request.get("Tags") or []))
        elif name == "RemoveTagsFromResource":
            context["aws:TagKeys"] = list(request.get("TagKeys") or [])
        _ask(record, f"ssm:{name}", arn, context)
    elif name == "GetParameter":
        parameter = str(request.get("Name", ""))
        arn = _parameter_arn(record, parameter)
        _ask(record, "ssm:GetParameter", arn, _parameter_tags(record, parameter))
        stored = _stored_parameter(record, parameter)
        if request.get("WithDecryption") and stored is not None and stored.parameter_type == "SecureString":
            _via_ssm(record, "kms:Decrypt", stored.keyid, arn)
    elif name == "GetParameters":
        for parameter in request.get("Names") or []:
            arn = _parameter_arn(record, str(parameter))
            _ask(record, "ssm:GetParameters", arn, _parameter_tags(record, str(parameter)))
            stored = _stored_parameter(record, str(parameter))
            if request.get("WithDecryption") and stored is not None and stored.parameter_type == "SecureString":
                _via_ssm(record, "kms:Decrypt", stored.keyid, arn)
    elif name == "GetParametersByPath":
        path = str(request.get("Path", ""))
        context = {"ssm:Recursive": "true" if request.get("Recursive") else "false"}
        _ask(record, "ssm:GetParametersByPath", _parameter_arn(record, path.rstrip("/") or "/"), context)
        if request.get("WithDecryption"):
            backend = _ssm_backend(account, region)
            for stored_name, versions in list(backend._parameters.items()):
                latest = versions[-1] if versions else None
                if latest is not None and latest.parameter_type == "SecureString" and stored_name.startswith(path.rstrip("/") + "/"):
                    _via_ssm(record, "kms:Decrypt", latest.keyid, _parameter_arn(record, stored_name))
    elif name == "PutParameter":
        parameter = str(request.get("Name", ""))
        arn = _parameter_arn(record, parameter)
        context = {"ssm:Overwrite": "true" if request.get("Overwrite") else "false"}
        if request.get("Tags"):
            context.update(_tag_context(request["Tags"]))
        _ask(record, "ssm:PutParameter", arn, context)
        if request.get("Type") == "SecureString":
            _via_ssm(record, "kms:Encrypt", request.get("KeyId"), arn)
    elif name in ("DeleteParameter", "GetParameterHistory", "LabelParameterVersion"):
        _ask(record, f"ssm:{name}", _parameter_arn(record, str(request.get("Name", ""))))
    else:
        _ask(record, f"ssm:{name}", "*")
