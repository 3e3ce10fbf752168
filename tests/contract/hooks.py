"""schemathesis hooks for tests/contract/run.sh (loaded through SCHEMATHESIS_HOOKS).

The one rule of the contract that OpenAPI cannot state: a query parameter and its
header twin (`instance` / `X-Instance-Name`, `machine` / `X-Machine-Id`), when both
are given, must agree (case-insensitively), or the answer is 400 InvalidParameter.
Each is valid on its own, so a schema-valid case may carry two that disagree and be
refused; for such cases the header is given the query parameter's value. Cases
generated to be invalid are left alone: they must be refused either way.
"""

from __future__ import annotations

import schemathesis

TWINS = (("instance", "X-Instance-Name"), ("machine", "X-Machine-Id"))


@schemathesis.hook
def map_case(context, case):  # noqa: ARG001 - the hook's signature
    meta = case.meta
    if meta is not None and meta.generation.mode.is_negative:
        return case
    query = case.query or {}
    headers = case.headers or {}
    for parameter, header in TWINS:
        value = query.get(parameter)
        if isinstance(value, str) and header in headers:
            headers[header] = value
    return case
