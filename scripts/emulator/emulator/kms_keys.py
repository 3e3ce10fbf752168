"""AWS-managed KMS keys as AWS describes them.

moto makes the key behind a reserved alias (alias/aws/ssm, alias/aws/s3, ...) on first
use, as AWS does, but describes it with KeyManager "CUSTOMER", kinder than AWS: the
service refuses an AWS-managed key for its codes (any principal of the account may use
alias/aws/ssm through Parameter Store), and against moto that check could never fire.
Here such a key has KeyManager "AWS", as DescribeKey answers on AWS.
"""

from __future__ import annotations

from typing import Any

from moto.kms.models import KmsBackend


def aws_managed(original: Any) -> Any:
    """moto's maker of the keys behind reserved aliases, marking them AWS-managed."""

    def generate_default_keys(self: KmsBackend, alias_name: str) -> str | None:
        key_id: str | None = original(self, alias_name)
        if key_id is not None:
            self.keys[key_id].key_manager = "AWS"
        return key_id

    return generate_default_keys
