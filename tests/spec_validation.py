"""Validate Graph API send bodies against Meta's own OpenAPI document (schema ``Message``).

Why a helper of its own: tests of every part that builds payloads can ask "would Meta accept
this?" with one call, against the real spec (located like the simulator does, never copied into
the repository), with ``$ref`` resolved by jsonschema's registry rather than by hand.

Two faithful readings of the spec, applied when it is loaded:

- Meta writes each message as ``allOf: [BaseMessageProperties, {additionalProperties: false}]``.
  Read literally that rejects every message (``to`` is "additional" to the second branch). What
  Meta means is JSON Schema 2020-12's ``unevaluatedProperties: false`` on the combination, which
  is what the branch's ``additionalProperties: false`` is turned into.
- v23.0 predates business-scoped user ids: a body addressed with ``recipient`` is checked with
  that value in ``to``.

Mark-as-read bodies are not a ``Message``; they are checked against the spec's own example
("Send typing indicator and read receipt"): same keys, same types, ``status: read``.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from sim.spec import find_spec

READ_EXAMPLE = "Send typing indicator and read receipt"


def _close_all_of(node: Any) -> Any:
    """``allOf`` branches with ``additionalProperties: false`` → ``unevaluatedProperties``."""
    if isinstance(node, list):
        return [_close_all_of(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _close_all_of(value) for key, value in node.items()}
    branches = node.get("allOf")
    if isinstance(branches, list) and any(
        isinstance(b, dict) and b.get("additionalProperties") is False for b in branches
    ):
        node["allOf"] = [
            {k: v for k, v in b.items() if k != "additionalProperties"}
            if isinstance(b, dict)
            else b
            for b in branches
        ]
        node["unevaluatedProperties"] = False
    return node


@functools.cache
def _load() -> tuple[jsonschema.protocols.Validator, dict[str, Any], dict[str, Any]] | None:
    path: Path | None = find_spec()
    if path is None:
        return None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - safe loader
    schemas = _close_all_of(doc["components"]["schemas"])
    root = {"$ref": "#/components/schemas/Message", "components": {"schemas": schemas}}
    validator = jsonschema.Draft202012Validator(root)
    # the discriminator (ignored by JSON Schema) names the branch worth explaining on failure
    by_type = {
        kind: jsonschema.Draft202012Validator({**root, "$ref": ref})
        for kind, ref in doc["components"]["schemas"]["Message"]["discriminator"]["mapping"].items()
    }
    read_example: dict[str, Any] = {}
    for item in doc["paths"].values():
        examples = (
            item.get("post", {})
            .get("requestBody", {})
            .get("content", {})
            .get("application/json", {})
            .get("examples", {})
        )
        if READ_EXAMPLE in examples:
            read_example = examples[READ_EXAMPLE]["value"]
    return validator, by_type, read_example


def spec_available() -> bool:
    """Whether Meta's OpenAPI document was found (tests skip, loudly, when it was not)."""
    return _load() is not None


def message_errors(payload: Any) -> list[str]:
    """Every reason Meta's spec rejects ``payload`` (empty when it is valid)."""
    loaded = _load()
    if loaded is None:
        raise RuntimeError("Meta's OpenAPI spec was not found (set ONYX_WA_SIM_SPEC)")
    validator, by_type, read_example = loaded
    if isinstance(payload, dict) and payload.get("status") == "read":
        return _read_errors(payload, read_example)
    candidate = payload
    if isinstance(payload, dict) and "recipient" in payload and "to" not in payload:
        candidate = copy.deepcopy(payload)
        candidate["to"] = candidate.pop("recipient")
    if validator.is_valid(candidate):
        return []
    kind = candidate.get("type") if isinstance(candidate, dict) else None
    branch = by_type.get(kind) if isinstance(kind, str) else None
    if branch is None:
        return [f"type: {kind!r} is not one of {sorted(by_type)}"]
    errors = []
    for error in branch.iter_errors(candidate):
        # explain a failed oneOf (the interactive action) by its closest alternative
        leaf = jsonschema.exceptions.best_match(error.context) if error.context else error
        where = "/".join(str(p) for p in leaf.absolute_path) or "(body)"
        errors.append(f"{where}: {leaf.message[:200]}")
    return errors or ["rejected by the Message schema"]


def _read_errors(payload: dict[str, Any], example: dict[str, Any]) -> list[str]:
    if not example:
        return ["the spec's read-receipt example was not found"]
    errors = []
    for key in payload.keys() - example.keys():
        errors.append(f"{key}: not in Meta's read-receipt body")
    for key in ("messaging_product", "status", "message_id"):
        if key not in payload:
            errors.append(f"{key}: required")
    for key, value in payload.items():
        if key in example and type(value) is not type(example[key]):
            errors.append(f"{key}: {type(value).__name__}, expected {type(example[key]).__name__}")
    if payload.get("typing_indicator", example.get("typing_indicator")) != example.get(
        "typing_indicator"
    ):
        errors.append("typing_indicator: must be {'type': 'text'}")
    return errors


def validate_message_payload(payload: Any) -> None:
    """Raise AssertionError naming each problem when Meta's spec rejects ``payload``."""
    errors = message_errors(payload)
    assert not errors, "payload rejected by Meta's spec:\n  " + "\n  ".join(errors)
