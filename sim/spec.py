"""Validate Graph API send bodies against Meta's OpenAPI document, plus the brief's limits.

The spec (OpenAPI 3.1, v23.0) is read from ``ONYX_WA_SIM_SPEC`` or ``../shared/spec/`` next to the
repository; it is never copied into the project. Two faithful adjustments are made once, when the
validator is compiled, and both are documented in docs/simulator.md:

- Meta writes each message type as ``allOf: [BaseMessageProperties, {additionalProperties:
  false, ...}]``. Under strict JSON Schema that rejects *every* message (``to`` is "additional" in
  the second part); the evident intent, which is how Meta's servers behave, is one object whose
  allowed properties are the union. ``allOf`` of objects is therefore merged before compiling.
- v23.0 predates business-scoped user ids: a body addressed with ``recipient`` (a BSUID) instead
  of ``to`` is validated with that value in ``to``.

Without a spec file the validator still enforces the limits, and says so once in the log.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from pathlib import Path
from typing import Any

import jsonschema

log = logging.getLogger(__name__)

SPEC_NAME = "whatsapp-business-messaging-api_v23.0.yaml"
LIMITS = {
    "text": 4096,
    "interactive_body": 1024,
    "footer": 60,
    "buttons": 3,
    "button_id": 256,
    "button_title": 20,
    "list_rows": 10,
    "row_title": 24,
    "row_description": 72,
    "list_button": 20,
    "caption": 1024,
}


def find_spec() -> Path | None:
    """The spec file: ``ONYX_WA_SIM_SPEC``, else ``../shared/spec/`` beside the repository."""
    env = os.environ.get("ONYX_WA_SIM_SPEC")
    if env:
        return Path(env) if Path(env).is_file() else None
    repo = Path(__file__).resolve().parents[1]
    # ../shared/spec beside the checkout (or beside any ancestor: clones may sit deeper), then
    # the workspace's shared folder, where CI clones elsewhere still find it
    candidates = [p / "shared" / "spec" for p in repo.parents] + [Path("/work/shared/spec")]
    for base in candidates:
        if (base / SPEC_NAME).is_file():
            return base / SPEC_NAME
    return None


def _deref(node: Any, components: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[-1]
            if name in seen:  # recursive type: stop inlining, accept anything there
                return {}
            return _deref(components[name], components, (*seen, name))
        return {k: _deref(v, components, seen) for k, v in node.items() if k != "discriminator"}
    if isinstance(node, list):
        return [_deref(v, components, seen) for v in node]
    return node


def _merge_all_of(node: Any) -> Any:
    if isinstance(node, list):
        return [_merge_all_of(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _merge_all_of(v) for k, v in node.items()}
    parts = node.get("allOf")
    if isinstance(parts, list) and all(
        isinstance(p, dict) and (p.get("type") == "object" or "properties" in p) for p in parts
    ):
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        closed = False
        for part in parts:
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += [
                r for r in part.get("required", []) if r not in merged["required"]
            ]
            closed |= part.get("additionalProperties") is False
        if closed:
            merged["additionalProperties"] = False
        rest = {k: v for k, v in node.items() if k != "allOf"}
        merged.update(
            {k: v for k, v in rest.items() if k not in ("type", "properties", "required")}
        )
        return merged
    return node


class SpecValidator:
    """Compiled once; ``validate_send`` returns error messages (empty list = valid)."""

    def __init__(self, spec_path: Path | None) -> None:
        self.spec_path = spec_path
        # one compiled validator per message type, chosen by the spec's discriminator: faster
        # than a 11-way oneOf and it names the real problem instead of "not valid under any"
        self._by_type: dict[str, Any] = {}
        if spec_path is not None:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            doc = yaml.load(spec_path.read_text(), Loader=loader)  # noqa: S506 - safe loader
            components = doc["components"]["schemas"]
            mapping = components["Message"]["discriminator"]["mapping"]
            for kind, ref in mapping.items():
                schema = _merge_all_of(_deref({"$ref": ref}, components))
                self._by_type[kind] = jsonschema.Draft202012Validator(schema)
        else:
            log.warning("WhatsApp OpenAPI spec not found: validating the brief's limits only")

    @property
    def uses_spec(self) -> bool:
        return bool(self._by_type)

    def validate_send(self, payload: Any) -> list[str]:
        if not isinstance(payload, dict):
            return ["body must be a JSON object"]
        if payload.get("status") == "read":
            return self._validate_read(payload)
        errors = self._limits(payload)
        if self._by_type:
            validator = self._by_type.get(payload.get("type"))  # type: ignore[arg-type]
            if validator is None:
                return [
                    *errors,
                    f"type: {payload.get('type')!r} is not one of {sorted(self._by_type)}",
                ]
            candidate = payload
            if "recipient" in payload and "to" not in payload:
                candidate = copy.copy(payload)
                candidate["to"] = candidate.pop("recipient")
            best = jsonschema.exceptions.best_match(validator.iter_errors(candidate))
            if best is not None:
                where = "/".join(str(p) for p in best.absolute_path) or "(body)"
                errors.append(f"{where}: {best.message[:300]}")
        return errors

    @staticmethod
    def _validate_read(payload: dict[str, Any]) -> list[str]:
        errors = []
        if payload.get("messaging_product") != "whatsapp":
            errors.append("messaging_product must be 'whatsapp'")
        if not isinstance(payload.get("message_id"), str) or not payload["message_id"]:
            errors.append("message_id is required")
        typing = payload.get("typing_indicator")
        if typing is not None and typing != {"type": "text"}:
            errors.append("typing_indicator must be {'type': 'text'}")
        extra = set(payload) - {"messaging_product", "status", "message_id", "typing_indicator"}
        if extra:
            errors.append(f"unexpected properties {sorted(extra)}")
        return errors

    @staticmethod
    def _limits(p: dict[str, Any]) -> list[str]:
        errors: list[str] = []
        kind = p.get("type")
        group = p.get("recipient_type") == "group"
        if kind == "text":
            body = (p.get("text") or {}).get("body")
            if not isinstance(body, str) or not body:
                errors.append("text.body is required")
            elif len(body) > LIMITS["text"]:
                errors.append(f"text.body is {len(body)} characters; the limit is 4096")
        if kind in ("image", "video", "document"):
            caption = (p.get(kind) or {}).get("caption") or ""
            if len(caption) > LIMITS["caption"]:
                errors.append(f"{kind}.caption over {LIMITS['caption']} characters")
        if kind == "interactive":
            if group:
                errors.append("interactive messages are not supported in groups")
            inter = p.get("interactive") or {}
            body = (inter.get("body") or {}).get("text") or ""
            if len(body) > LIMITS["interactive_body"]:
                errors.append("interactive.body.text over 1024 characters")
            if len((inter.get("footer") or {}).get("text") or "") > LIMITS["footer"]:
                errors.append("interactive.footer.text over 60 characters")
            action = inter.get("action") or {}
            buttons = action.get("buttons") or []
            if len(buttons) > LIMITS["buttons"]:
                errors.append(f"{len(buttons)} buttons; at most 3 reply buttons")
            for b in buttons:
                reply = b.get("reply") or {}
                if len(reply.get("id") or "") > LIMITS["button_id"]:
                    errors.append("button id over 256 characters")
                if len(reply.get("title") or "") > LIMITS["button_title"]:
                    errors.append(f"button title {reply.get('title')!r} over 20 characters")
            rows = [r for s in action.get("sections") or [] for r in s.get("rows") or []]
            if len(rows) > LIMITS["list_rows"]:
                errors.append(f"{len(rows)} list rows; at most 10")
            for r in rows:
                if len(r.get("title") or "") > LIMITS["row_title"]:
                    errors.append("list row title over 24 characters")
                if len(r.get("description") or "") > LIMITS["row_description"]:
                    errors.append("list row description over 72 characters")
            if inter.get("type") == "list" and len(action.get("button") or "") > 20:
                errors.append("list button over 20 characters")
        return errors


@functools.lru_cache(maxsize=2)
def load_validator(path: str | None = None) -> SpecValidator:
    """The process-wide validator (compiling the spec takes ~1 s; do it once)."""
    return SpecValidator(Path(path) if path else find_spec())
