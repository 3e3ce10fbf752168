"""Every patch of moto, with the reason, in one table; install() applies them all.

moto (pinned in requirements.txt) is the emulator's base. Where it lacks an API the
service or its tests use, where it is kinder than AWS (accepts what AWS refuses, answers
what AWS would not), or where it has a cost AWS does not have, a patch below adds,
replaces or wraps one attribute of its classes. Nothing else in the package changes moto's classes; what the
emulator adds beside moto (the agent's protocol, the control endpoints, faults, latency,
the error shapes) is routed around it in app.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import moto.kms.utils

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler
from moto.kms.models import KmsBackend
from moto.ssm.models import Parameter, SimpleSystemManagerBackend
from moto.ssm.responses import SimpleSystemManagerResponse

from . import dynamodb, kms_keys, parameter_store, principals, ssm_activations, ssm_nodes, ssm_tags


# What a patch does to moto's attribute; install() checks that moto is as the table says.
ADDS = "adds"  # moto has no such attribute
REPLACES = "replaces"  # moto's attribute is set aside
WRAPS = "wraps"  # `new` takes moto's attribute and returns what calls it


@dataclass(frozen=True)
class Patch:
    owner: type | ModuleType
    name: str
    kind: str
    new: Callable[..., Any]
    why: str


SSM_RESPONSE, SSM_BACKEND = SimpleSystemManagerResponse, SimpleSystemManagerBackend

PATCHES: tuple[Patch, ...] = (
    # SSM hybrid activations (ssm_activations.py).
    Patch(SSM_RESPONSE, "create_activation", ADDS, ssm_activations.create_activation,
          "moto lacks CreateActivation: the service's one way to make codes"),
    Patch(SSM_RESPONSE, "describe_activations", ADDS, ssm_activations.describe_activations,
          "moto lacks DescribeActivations (filters, cursor pages): the service's view of its codes"),
    Patch(SSM_RESPONSE, "delete_activation", ADDS, ssm_activations.delete_activation,
          "moto lacks DeleteActivation: rotation and the sweep retire codes with it"),
    # SSM managed nodes (ssm_nodes.py): moto knows no hybrid node.
    Patch(SSM_RESPONSE, "describe_instance_information", ADDS, ssm_nodes.describe_instance_information,
          "moto lacks DescribeInstanceInformation (SSM's filters, MaxResults and cursor pages)"),
    Patch(SSM_RESPONSE, "deregister_managed_instance", ADDS, ssm_nodes.deregister_managed_instance,
          "moto lacks DeregisterManagedInstance: the sweep of stale nodes"),
    Patch(SSM_BACKEND, "_validate_resource_type_and_id", WRAPS, ssm_nodes.taggable_nodes,
          "moto refuses every ManagedInstance in the tagging calls: it knows no node"),
    Patch(SSM_RESPONSE, "add_tags_to_resource", WRAPS, ssm_tags.validating_add_tags_to_resource,
          "moto is kinder than AWS: it takes tags outside SSM's tag alphabet and limits"),
    # Parameter Store.
    Patch(SSM_BACKEND, "get_parameters_by_path", REPLACES, parameter_store.get_parameters_by_path,
          "moto is kinder than AWS: no MaxResults/path/filter validation, and an offset "
          "NextToken that shifts when a parameter is deleted between pages"),
    Patch(Parameter, "describe_response_object", WRAPS, principals.describe_with_writer,
          'moto answers LastModifiedUser "N/A": no check of who wrote a pool could fail'),
    # KMS.
    Patch(KmsBackend, "_generate_default_keys", WRAPS, kms_keys.aws_managed,
          'moto is kinder than AWS: alias/aws/* keys say KeyManager "CUSTOMER", so the '
          "service's refusal of AWS-managed keys could never fire"),
    Patch(moto.kms.utils, "_serialize_encryption_context", REPLACES, kms_keys.unambiguous_context,
          'moto is kinder than AWS: it runs the context\'s keys and values together, so '
          '{"ab": "c"} opens a ciphertext sealed under {"a": "bc"}'),
    # DynamoDB (dynamodb.py).
    Patch(DynamoHandler, "transact_write_items", WRAPS, dynamodb.idempotent_transact_write_items,
          "moto ignores TransactWriteItems' ClientRequestToken: a retried commit would apply twice"),
    Patch(Table, "__deepcopy__", ADDS, dynamodb.table_deepcopy,
          "moto copies every table a transaction names, whole: a cost per commit that grows "
          "with the table, which AWS does not have (the copy is the table itself meanwhile)"),
    Patch(DynamoDBBackend, "transact_write_items", WRAPS, dynamodb.restoring_touched_items,
          "with the shallow table copies above, a failed transaction is rolled back by the "
          "items it touched"),
)

_installed = False


def install() -> None:
    """Applies every patch above, once per process (a second call does nothing). Fails,
    naming the patch, if moto is not as the table says (an upgrade that added, renamed or
    removed an attribute): each patch is then to be looked at again."""
    global _installed
    if _installed:
        return
    for patch in PATCHES:
        has = hasattr(patch.owner, patch.name)
        if has != (patch.kind != ADDS):
            state = "has" if has else "has no"
            raise RuntimeError(f"moto {state} {patch.owner.__name__}.{patch.name}; the emulator {patch.kind} it: {patch.why}")
    for patch in PATCHES:
        new = patch.new(getattr(patch.owner, patch.name)) if patch.kind == WRAPS else patch.new
        setattr(patch.owner, patch.name, new)
    _installed = True
