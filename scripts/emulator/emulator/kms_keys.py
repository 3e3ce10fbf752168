"""AWS-managed KMS keys as AWS describes them.

moto makes the key behind a reserved alias (alias/aws/ssm, alias/aws/s3, ...) on first
use, as AWS does, but describes it with KeyManager "CUSTOMER", kinder than AWS: the
service refuses an AWS-managed key for its codes (any principal of the account may use
alias/aws/ssm through Parameter Store), and against moto that check could never fire.
Here such a key has KeyManager "AWS", as DescribeKey answers on AWS.

moto binds a ciphertext to its encryption context (the context is AES-GCM's additional
data, so Decrypt under another context is InvalidCiphertextException, as at AWS), but it
serializes the context as its keys and values run together: {"ab": "c"} and
{"a": "bc"} are one context to moto and two to AWS. `unambiguous_context` serializes
each key and value with its length.
"""

from __future__ import annotations

import struct
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


def unambiguous_context(encryption_context: dict[str, str]) -> bytes:
    """The additional data a ciphertext is bound to: each key and value, sorted by key,
    prefixed with its length, so that no two contexts serialize alike."""
    out = bytearray()
    for key, value in sorted(encryption_context.items()):
        for part in (key.encode("utf-8"), value.encode("utf-8")):
            out += struct.pack(">I", len(part)) + part
    return bytes(out)
