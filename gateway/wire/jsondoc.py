"""Strict JSON for messages from outside, and JSON Schema errors people can read.

`decode_json` refuses what `json.loads` lets through and would fail later: NaN and infinities,
duplicate keys, lone surrogates. `describe_error` turns a jsonschema error into one short
line naming the field (`lines[2].quantity: ...`). `load_valid` does both steps, with a size
limit, for every message the gateway takes from outside (WMS data, AGV requests, VDA 5050).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: jsonschema comes with the first validator (gateway.schemas)
    from jsonschema import ValidationError
    from jsonschema.protocols import Validator

__all__ = [
    "InvalidDocument",
    "decode_json",
    "describe_error",
    "json_path",
    "load_valid",
    "one_line",
    "show",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,59}")


class InvalidDocument(ValueError):
    """A payload too large, not strict JSON, or failing its schema; the text says why."""


def load_valid(payload: bytes, validator: Validator, *, max_bytes: int) -> Any:
    """The JSON document in `payload`, checked against `validator`; raises `InvalidDocument`.

    Only the first schema error is taken: jsonschema finds them lazily, and collecting all of
    them from a hostile megabyte takes minutes. The schemas are written so that the first
    error is the one to report (type, then fields, then contents).
    """
    if len(payload) > max_bytes:
        raise InvalidDocument(f"payload: {len(payload)} bytes, more than the limit of {max_bytes}")
    try:
        doc = decode_json(payload)
        error = next(iter(validator.iter_errors(doc)), None)
    except UnicodeError as err:  # before ValueError, which it is
        raise InvalidDocument(f"payload: not UTF-8 ({err})") from None
    except RecursionError:
        raise InvalidDocument("payload: JSON nested too deeply") from None
    except ValueError as err:
        raise InvalidDocument(f"payload: not valid JSON ({err})") from None
    if error is not None:
        raise InvalidDocument(describe_error(error))
    return doc


def decode_json(payload: bytes) -> Any:
    """JSON from strict UTF-8; no NaN or infinities, no duplicate keys, no lone surrogates."""
    doc = json.loads(
        payload.decode("utf-8"),
        parse_constant=_refuse_constant,
        parse_float=_finite_float,
        object_pairs_hook=_unique_keys,
    )
    # "\ud800" is valid JSON but no valid text: it would fail later, in SQLite or in a log.
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (\\ud800 to \\udfff)") from None
    return doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {show(key)}")
        doc[key] = value
    return doc


def describe_error(error: ValidationError) -> str:
    field = json_path(error.absolute_path)
    keyword = error.validator
    value: Any = error.validator_value
    instance: Any = error.instance
    schema: Any = error.schema  # a dict: every schema here is an object
    match keyword:
        case "required":
            missing = next(name for name in value if name not in instance)
            return f"{json_path([*error.absolute_path, missing])}: required but missing"
        case "additionalProperties":
            known = schema.get("properties", {})
            extra = sorted(name for name in instance if name not in known)
            return f"{json_path([*error.absolute_path, extra[0]])}: unknown field"
        case "type":
            return f"{field}: must be {_a(value)}, got {_json_type(instance)}"
        case "pattern" | "minLength" | "maxLength" | "format" if "title" in schema:
            return f"{field}: {show(instance)} is not a valid {schema['title']}"
        case "format":
            return f"{field}: {show(instance)} is not a valid {value}"
        case "minimum":
            return f"{field}: {show(instance)} is less than {value}"
        case "exclusiveMinimum":
            return f"{field}: {show(instance)} must be more than {value}"
        case "maximum":
            return f"{field}: {show(instance)} is more than {value}"
        case "enum":
            return f"{field}: {show(instance)} is not one of {', '.join(map(str, value))}"
        case "minItems":
            return f"{field}: needs at least {value} item{'s' if value != 1 else ''}"
        case "maxItems":
            return f"{field}: more than {value} items"
        case "uniqueItems":
            return f"{field}: lists the same value twice"
        case "minProperties":
            return f"{field}: needs at least one of {', '.join(schema.get('properties', {}))}"
        case "oneOf" | "anyOf":
            names = [name for branch in value for name in branch.get("required", ())]
            present = [name for name in names if isinstance(instance, dict) and name in instance]
            if keyword == "anyOf":
                return f"{field}: needs a non-empty {' or '.join(names)}"
            if present:
                return (
                    f"{field}: has {' and '.join(present)}; give exactly one of {', '.join(names)}"
                )
            return f"{field}: needs exactly one of {', '.join(names)}"
    return f"{field}: {one_line(error.message)}"


def json_path(parts: Iterable[str | int]) -> str:
    """A JSON path the way people write it: `lines[2].quantity`; the whole document is `payload`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _NAME.fullmatch(part):
            text += f".{part}" if text else part
        else:  # an unknown key can be anything: show it quoted, escaped and short
            text += f"[{show(part, 40)}]"
    return text or "payload"


def _a(types: str | list[str]) -> str:
    names = [types] if isinstance(types, str) else types
    return " or ".join(("an " if n[0] in "aeiou" else "a ") + n for n in names)


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return "an object"


def show(value: Any, limit: int = 60) -> str:
    """A value as short, one-line JSON, for a reason."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
