"""CloudFormation helpers the template gates share (test_template_security.py and
test_ecs_template.py): plain reads of a template as a dict, nothing template-specific."""

from __future__ import annotations


def parameter_values(source: dict, overrides: dict) -> dict:
    values = {name: str(p.get("Default", "")) for name, p in source.get("Parameters", {}).items()}
    values.update(overrides)
    return values


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def of_type(cfn: dict, type_: str) -> dict:
    return {n: r for n, r in cfn["Resources"].items() if r.get("Type") == type_}


def props(res: dict) -> dict:
    return res.get("Properties", {})


def principal_is_everyone(principal) -> bool:
    return principal == "*" or (isinstance(principal, dict) and "*" in as_list(principal.get("AWS")))
