"""Provision what the service expects to find in AWS, inside the emulator.

Creates (idempotently) the DynamoDB table, a customer KMS key with an alias, and the
managed-instance IAM role, then prints the matching `export VAR=value` lines.

Provisioning signs with the access key "test"; the printed settings give `vending` its own
(iam_calls.SERVICE_ACCESS_KEY_ID), by which the emulator tells the service's calls from the
tests' and records what IAM each needs (EMULATOR_IAM_CALLS_DIR, iam_calls.py).
"""

from __future__ import annotations

import argparse
import json

import boto3
from botocore.config import Config

from emulator.iam_calls import SERVICE_ACCESS_KEY_ID


DEFAULTS = {
    "region": "us-east-1",
    "table": "activation-vending",
    "prefix": "/activation-vending",
    "role": "activation-vending-managed-instance",
    "key_alias": "alias/activation-vending",
}


def new_session(region: str = DEFAULTS["region"]) -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=region)


def provision(endpoint: str, warm: boto3.session.Session | None = None, **settings: str) -> list[tuple[str, str]]:
    """Creates what the service expects at `endpoint`; the settings to run it with.
    `warm`: a session that has made these clients before (its service models loaded)."""
    args = argparse.Namespace(endpoint=endpoint, **{**DEFAULTS, **settings})
    session = warm if warm is not None and warm.region_name == args.region else new_session(args.region)
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    client = lambda name: session.client(name, endpoint_url=args.endpoint, config=config)  # noqa: E731

    dynamodb = client("dynamodb")
    if args.table not in dynamodb.list_tables()["TableNames"]:
        dynamodb.create_table(
            TableName=args.table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.update_time_to_live(
            TableName=args.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"}
        )

    kms = client("kms")
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    if args.key_alias not in aliases:
        key_id = kms.create_key(Description="activation-vending codes")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=args.key_alias, TargetKeyId=key_id)

    iam = client("iam")
    try:
        iam.get_role(RoleName=args.role)
    except iam.exceptions.NoSuchEntityException:
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "ssm.amazonaws.com"}, "Action": "sts:AssumeRole"}],
        }
        iam.create_role(RoleName=args.role, AssumeRolePolicyDocument=json.dumps(trust))

    return [
        ("AWS_ENDPOINT_URL", args.endpoint),
        ("AWS_REGION", args.region),
        ("AWS_ACCESS_KEY_ID", SERVICE_ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("VENDING_TABLE", args.table),
        ("VENDING_PARAMETER_PREFIX", args.prefix),
        ("VENDING_KMS_KEY_ID", args.key_alias),
        ("VENDING_INSTANCE_ROLE", args.role),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", default=DEFAULTS["region"])
    parser.add_argument("--table", default=DEFAULTS["table"])
    parser.add_argument("--prefix", default=DEFAULTS["prefix"])
    parser.add_argument("--role", default=DEFAULTS["role"])
    parser.add_argument("--key-alias", default=DEFAULTS["key_alias"])
    args = vars(parser.parse_args())
    for name, value in provision(args.pop("endpoint"), **args):
        print(f"export {name}={value}")


if __name__ == "__main__":
    main()
