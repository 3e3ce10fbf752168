"""The SSM Agent's own protocol at the emulator's SSM endpoint (scripts/emulator/emulator/agent_protocol.py).

Spoken by tests/bootstrap/standins/ssm_agent_client.py, which signs as the agent does
(an RSA-PSS signature over SigV4's string to sign for RequestManagedInstanceRoleToken,
SigV4 HMAC with the issued credentials for the worker's calls): registration and each of
SSM's refusals, the token and its signature check, the check-in that makes a node Online,
the worker's quiet polling.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from test_emulator import (  # noqa: F401  (fixtures)
    MI_ID,
    ROLE,
    by_activation,
    clean,
    control,
    emulator,
    new_activation,
    raw_call,
    register,
    register_ok,
    ssm,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bootstrap" / "standins"))
import ssm_agent_client as agent  # noqa: E402

REGION = "us-east-1"


def vault() -> Path:
    return Path(tempfile.mkdtemp(prefix="vault-"))


def refusal(call: Any) -> str:
    with pytest.raises(agent.SsmError) as err:
        call()
    return err.value.code


def describe(ssm: Any, activation_id: str) -> list[dict[str, Any]]:
    return list(ssm.describe_instance_information(Filters=by_activation(activation_id))["InstanceInformationList"])


def activation(ssm: Any, activation_id: str) -> dict[str, Any]:
    (found,) = ssm.describe_activations(Filters=[{"FilterKey": "ActivationIds", "FilterValues": [activation_id]}])["ActivationList"]
    return dict(found)


def test_the_agents_registration_creates_a_node_that_is_not_online_until_it_checks_in(emulator: str, ssm: Any) -> None:
    activation_id, code, pool = new_activation(ssm, limit=2)
    before = time.time()
    instance_id = agent.register(emulator, vault(), code, activation_id, REGION)
    assert MI_ID.match(instance_id)
    (node,) = describe(ssm, activation_id)
    assert node["InstanceId"] == instance_id and node["ActivationId"] == activation_id and node["IamRole"] == ROLE
    assert node["PingStatus"] == "ConnectionLost"
    assert node["RegistrationDate"].timestamp() >= before - 1
    assert "ComputerName" not in node and "AgentVersion" not in node
    tags = ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=instance_id)["TagList"]
    assert {"Key": "activation-vending:pool", "Value": pool} in tags
    assert activation(ssm, activation_id)["RegistrationsCount"] == 1


def test_a_check_in_makes_the_node_online_with_what_the_agent_says(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm)
    keys = vault()
    instance_id = agent.register(emulator, keys, code, activation_id, REGION)
    agent.check_in(emulator, keys, {"ComputerName": "web-01", "PlatformType": "Linux", "PlatformName": "Rocky Linux", "PlatformVersion": "9.4", "IPAddress": "10.1.2.3"})
    (node,) = describe(ssm, activation_id)
    assert (node["InstanceId"], node["PingStatus"], node["ComputerName"]) == (instance_id, "Online", "web-01")
    assert (node["PlatformName"], node["PlatformVersion"], node["IPAddress"], node["AgentVersion"]) == ("Rocky Linux", "9.4", "10.1.2.3", agent.AGENT_VERSION)


@pytest.mark.parametrize("case", ["wrong code", "unknown id", "deleted", "limit"])
def test_registration_refusals_are_ssms(emulator: str, ssm: Any, case: str) -> None:
    activation_id, code, _ = new_activation(ssm, limit=1)
    if case == "wrong code":
        code = ("A" if code[0] != "A" else "B") + code[1:]
        expected = "InvalidActivation"
    elif case == "unknown id":
        activation_id, expected = str(uuid.uuid4()), "InvalidActivation"
    elif case == "deleted":
        ssm.delete_activation(ActivationId=activation_id)
        expected = "InvalidActivation"
    else:
        agent.register(emulator, vault(), code, activation_id, REGION)
        expected = "RegistrationLimitExceeded"
    keys = vault()
    assert refusal(lambda: agent.register(emulator, keys, code, activation_id, REGION)) == expected
    # The agent blanked its identity before asking: after a refusal it has none.
    assert agent.vault_read(keys)["instanceID"] == ""


def test_an_expired_activation_is_refused(emulator: str, ssm: Any) -> None:
    expires = time.time() + 1.5
    activation_id, code, _ = new_activation(ssm, limit=5, ExpirationDate=expires)
    time.sleep(max(0.0, expires - time.time()) + 0.1)
    assert refusal(lambda: agent.register(emulator, vault(), code, activation_id, REGION)) == "ActivationExpired"


def test_the_shortcut_counts_against_the_same_limit_and_checks_the_node_in(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm, limit=2)
    agent.register(emulator, vault(), code, activation_id, REGION)
    shortcut = register_ok(emulator, activation_id, code, "s-1")
    assert register(emulator, activation_id, code, "s-2") == (400, {"error": "RegistrationLimitExceeded"})
    assert refusal(lambda: agent.register(emulator, vault(), code, activation_id, REGION)) == "RegistrationLimitExceeded"
    assert {n["InstanceId"]: n["PingStatus"] for n in describe(ssm, activation_id)}[shortcut] == "Online"


def test_malformed_registrations_are_validation_errors_that_never_echo_the_code(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm)
    short = code[:19]
    status, _, body = raw_call(emulator, "AmazonSSM.RegisterManagedInstance", {"ActivationCode": short, "ActivationId": activation_id, "PublicKey": "x" * 400, "PublicKeyType": "Rsa", "Fingerprint": "f"}, "application/x-amz-json-1.1")
    assert status == 400 and json.loads(body)["__type"] == "ValidationException"
    assert short.encode() not in body
    status, _, body = raw_call(emulator, "AmazonSSM.RegisterManagedInstance", {"ActivationCode": code, "ActivationId": activation_id, "PublicKey": "A" * 400, "PublicKeyType": "Rsa", "Fingerprint": "f"}, "application/x-amz-json-1.1")
    assert status == 400 and json.loads(body)["__type"] == "InvalidParameters"
    assert activation(ssm, activation_id)["RegistrationsCount"] == 0


def test_the_role_token_needs_the_registered_keys_signature(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm, limit=2)
    keys, other = vault(), vault()
    instance_id = agent.register(emulator, keys, code, activation_id, REGION)
    agent.register(emulator, other, code, activation_id, REGION)
    creds = agent.role_token(emulator, keys)
    assert creds["AccessKeyId"].startswith("ASIA") and creds["SecretAccessKey"] and creds["SessionToken"]
    assert creds["TokenExpirationDate"] > time.time() and creds["UpdateKeyPair"] is False
    # Signed with another node's private key, in this node's name: refused.
    forged = agent.vault_read(other)
    agent.vault_store(other, "RegistrationKey", {**forged, "instanceID": instance_id})
    assert refusal(lambda: agent.role_token(emulator, other)) == "InvalidSignatureException"
    # Unsigned: refused.
    status, _, body = raw_call(emulator, "AmazonSSM.RequestManagedInstanceRoleToken", {"Fingerprint": "f"}, "application/x-amz-json-1.1")
    assert status == 400 and json.loads(body)["__type"] == "MissingAuthenticationTokenException"


def test_another_machines_fingerprint_is_refused(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm)
    keys = vault()
    agent.register(emulator, keys, code, activation_id, REGION)
    agent.vault_store(keys, "InstanceFingerprint", {"fingerprint": str(uuid.uuid4())})
    assert refusal(lambda: agent.role_token(emulator, keys)) == "MachineFingerprintDoesNotMatch"


def test_a_deregistered_or_unknown_node_gets_no_token_and_its_worker_is_cut_off(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm)
    keys = vault()
    instance_id = agent.register(emulator, keys, code, activation_id, REGION)
    creds = agent.role_token(emulator, keys)
    ssm.deregister_managed_instance(InstanceId=instance_id)
    assert refusal(lambda: agent.role_token(emulator, keys)) == "AccessDeniedException"
    body = {"InstanceId": instance_id, "AgentVersion": agent.AGENT_VERSION}
    assert refusal(lambda: agent.worker_call(emulator, "AmazonSSM.UpdateInstanceInformation", body, creds, REGION)) == "AccessDeniedException"
    agent.vault_store(keys, "RegistrationKey", {**agent.vault_read(keys), "instanceID": "mi-00000000000000000"})
    assert refusal(lambda: agent.role_token(emulator, keys)) == "AccessDeniedException"


def test_worker_calls_are_verified_against_the_issued_credentials(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm, limit=2)
    keys, other = vault(), vault()
    instance_id = agent.register(emulator, keys, code, activation_id, REGION)
    other_id = agent.register(emulator, other, code, activation_id, REGION)
    creds = agent.role_token(emulator, keys)
    body = {"InstanceId": instance_id, "AgentVersion": agent.AGENT_VERSION}
    bad_secret = {**creds, "SecretAccessKey": creds["SecretAccessKey"] + "x"}
    assert refusal(lambda: agent.worker_call(emulator, "AmazonSSM.UpdateInstanceInformation", body, bad_secret, REGION)) == "InvalidSignatureException"
    unknown = {**creds, "AccessKeyId": "ASIA0000000000000000"}
    assert refusal(lambda: agent.worker_call(emulator, "AmazonSSM.UpdateInstanceInformation", body, unknown, REGION)) == "UnrecognizedClientException"
    # One node's credentials cannot check another in.
    assert refusal(lambda: agent.worker_call(emulator, "AmazonSSM.UpdateInstanceInformation", {**body, "InstanceId": other_id}, creds, REGION)) == "AccessDeniedException"
    assert {n["InstanceId"]: n["PingStatus"] for n in describe(ssm, activation_id)} == {instance_id: "ConnectionLost", other_id: "ConnectionLost"}


def test_the_workers_polling_gets_quiet_empty_answers(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm)
    keys = vault()
    instance_id = agent.register(emulator, keys, code, activation_id, REGION)
    creds = agent.role_token(emulator, keys)
    messages = agent.worker_call(emulator, "EC2WindowsMessageDeliveryService.GetMessages", {"Destination": instance_id, "MessagesRequestId": str(uuid.uuid4()), "VisibilityTimeoutInSeconds": 10}, creds, REGION, "ec2messages")
    assert messages["Messages"] == [] and messages["Destination"] == instance_id
    assert agent.worker_call(emulator, "AmazonSSM.ListInstanceAssociations", {"InstanceId": instance_id}, creds, REGION) == {"Associations": []}


def test_agent_calls_are_counted_and_take_faults_as_every_aws_call(emulator: str, ssm: Any) -> None:
    activation_id, code, _ = new_activation(ssm)
    control(emulator, "DELETE", "/_emulator/calls")
    control(emulator, "POST", "/_emulator/faults", {"operation": "SSM.RegisterManagedInstance", "error": "ThrottlingException", "count": 1})
    assert refusal(lambda: agent.register(emulator, vault(), code, activation_id, REGION)) == "ThrottlingException"
    agent.register(emulator, vault(), code, activation_id, REGION)
    with urllib.request.urlopen(emulator + "/_emulator/calls", timeout=5) as resp:
        assert json.loads(resp.read())["SSM.RegisterManagedInstance"] == 2
    assert activation(ssm, activation_id)["RegistrationsCount"] == 1
