"""Reads activation IDs on stdin, describes them in the emulator (DescribeActivations,
the real AWS API) and prints how many hold more registrations than their limit.
Writes one line per activation to the report file given as the second argument.

usage: activation_usage.py EMULATOR_URL REPORT_FILE < activation-ids
"""

from __future__ import annotations

import os
import sys

import boto3


def main() -> int:
    endpoint, report = sys.argv[1], sys.argv[2]
    ids = sorted({line.strip() for line in sys.stdin if line.strip()})
    client = boto3.client(
        "ssm",
        endpoint_url=endpoint,
        region_name=os.environ.get("BOOTSTRAP_TEST_REGION", "us-east-1"),
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    over = 0
    lines = []
    for start in range(0, len(ids), 10):
        batch = ids[start : start + 10]
        pages = client.get_paginator("describe_activations").paginate(
            Filters=[{"FilterKey": "ActivationIds", "FilterValues": batch}]
        )
        for page in pages:
            for activation in page["ActivationList"]:
                count, limit = activation["RegistrationsCount"], activation["RegistrationLimit"]
                flag = "  OVER LIMIT" if count > limit else ""
                lines.append(f"activation {activation['ActivationId']}: {count}/{limit} registrations{flag}")
                over += count > limit
    with open(report, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + ("\n" if lines else ""))
    print(over)
    return 0


if __name__ == "__main__":
    sys.exit(main())
