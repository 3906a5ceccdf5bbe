"""Validate Graph API send bodies against Meta's OpenAPI document, plus the brief's limits.

Why the real spec: the simulator is the contract test for everything the project sends, so it
must reject what Meta rejects. The spec (OpenAPI 3.1, v23.0) is never copied into the project;
it is found, in order, at:

1. the path given to :func:`find_spec` / :func:`load_validator` explicitly;
2. ``ONYX_WA_SIM_SPEC`` (a file; if it is set but missing, that is logged and the search goes on);
3. ``../shared/spec/`` beside the repository root (the parent of the folder holding ``sim/``),
   then the same folder beside any further ancestor (clones that sit deeper), then the
   workspace's ``/work/shared/spec`` (CI clones elsewhere still find it).

Without a spec file the validator enforces the brief's limits and basic structure only, and
says so once in the log.

The request body schema is the one ``POST /{Version}/{Phone-Number-ID}/messages`` names
(``#/components/schemas/Message``), compiled once per message type (the spec's discriminator),
with two faithful adjustments, both documented in docs/simulator.md:

- Meta writes each message type as ``allOf: [BaseMessageProperties, {additionalProperties:
  false, ...}]``. Under strict JSON Schema that rejects *every* message (``to`` is "additional" in
  the second part); the evident intent, which is how Meta's servers behave, is one object whose
  allowed properties are the union. ``allOf`` of objects is therefore merged before compiling.
- v23.0 predates business-scoped user ids: a body addressed with ``recipient`` (a BSUID) instead
  of ``to`` is validated with that value in ``to``.
- v23.0 lists ``biz_opaque_callback_data`` (a string of at most 512 characters that Meta echoes
  in the message's status webhooks) only for calls, although Meta's Messages reference documents
  it on every message type. It is allowed on messages with that type and length; the egress
  relies on it to reconcile a send a crash left uncertain (docs/egress.md).
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
SPEC_ENV = "ONYX_WA_SIM_SPEC"
SEND_PATH = "/{Version}/{Phone-Number-ID}/messages"
KNOWN_TYPES = frozenset(
    {
        "text",
        "audio",
        "document",
        "image",
        "location",
        "video",
        "sticker",
        "reaction",
        "interactive",
        "template",
        "contacts",
    }
)
LIMITS = {
    "text": 4096,
    "interactive_body": 1024,
    "header_text": 60,
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
# Meta's Messages reference: echoed in the statuses of the message; v23.0's YAML omits it
CALLBACK_DATA = {"biz_opaque_callback_data": {"type": "string", "maxLength": 512}}
_READ_KEYS = frozenset({"messaging_product", "status", "message_id", "typing_indicator"})
_warned_missing = False


def find_spec(explicit: str | Path | None = None) -> Path | None:
    """Locate Meta's spec (see the module docstring for the order); None when there is none."""
    if explicit is not None:
        path = Path(explicit)
        return path if path.is_file() else None
    env = os.environ.get(SPEC_ENV)
    if env:
        if Path(env).is_file():
            return Path(env)
        log.warning("%s=%s is not a file; searching the default places", SPEC_ENV, env)
    repo = Path(__file__).resolve().parents[1]
    candidates = [p / "shared" / "spec" for p in repo.parents] + [Path("/work/shared/spec")]
    for base in candidates:
        if (base / SPEC_NAME).is_file():
            return base / SPEC_NAME
    return None


def _deref(node: Any, components: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """Inline ``#/components/schemas/...`` references (recursive types become "anything")."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[-1]
            if name in seen:
                return {}
            return _deref(components[name], components, (*seen, name))
        return {k: _deref(v, components, seen) for k, v in node.items() if k != "discriminator"}
    if isinstance(node, list):
        return [_deref(v, components, seen) for v in node]
    return node


def _merge_all_of(node: Any) -> Any:
    """``allOf`` of object schemas → one object schema whose properties are the union."""
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


def _send_schema_name(doc: dict[str, Any]) -> str:
    """The component the send endpoint's request body names (``Message`` in v23.0)."""
    try:
        schema = doc["paths"][SEND_PATH]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ]
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    except (KeyError, TypeError):
        return "Message"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def limit_errors(p: dict[str, Any]) -> list[str]:
    """The brief's limits and group rules, which the v23.0 spec does not (fully) encode.

    Tolerant of wrong types on purpose: a malformed body must produce an error message, never
    an exception (the simulator would answer 500 where Meta answers 100).
    """
    errors: list[str] = []
    kind = p.get("type")
    group = p.get("recipient_type") == "group"
    if kind == "text":
        body = _text(_obj(p.get("text")).get("body"))
        if not body:
            errors.append("text.body is required")
        elif len(body) > LIMITS["text"]:
            errors.append(f"text.body is {len(body)} characters; the limit is {LIMITS['text']}")
    elif kind in ("image", "video", "document"):
        caption = _text(_obj(p.get(kind)).get("caption"))
        if len(caption) > LIMITS["caption"]:
            errors.append(f"{kind}.caption over {LIMITS['caption']} characters")
    elif kind == "interactive":
        if group:
            errors.append("interactive messages are not supported in groups")
        errors += _interactive_errors(_obj(p.get("interactive")))
    return errors


def _interactive_errors(inter: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    if len(_text(_obj(inter.get("body")).get("text"))) > LIMITS["interactive_body"]:
        errors.append(f"interactive.body.text over {LIMITS['interactive_body']} characters")
    header = _obj(inter.get("header"))
    if header.get("type") == "text" and len(_text(header.get("text"))) > LIMITS["header_text"]:
        errors.append(f"interactive.header.text over {LIMITS['header_text']} characters")
    if len(_text(_obj(inter.get("footer")).get("text"))) > LIMITS["footer"]:
        errors.append(f"interactive.footer.text over {LIMITS['footer']} characters")
    action = _obj(inter.get("action"))
    buttons = _list(action.get("buttons"))
    if len(buttons) > LIMITS["buttons"]:
        errors.append(f"{len(buttons)} buttons; at most {LIMITS['buttons']} reply buttons")
    for button in buttons:
        reply = _obj(_obj(button).get("reply"))
        if len(_text(reply.get("id"))) > LIMITS["button_id"]:
            errors.append(f"button id over {LIMITS['button_id']} characters")
        title = _text(reply.get("title"))
        if len(title) > LIMITS["button_title"]:
            errors.append(f"button title {title!r} over {LIMITS['button_title']} characters")
    rows = [r for s in _list(action.get("sections")) for r in _list(_obj(s).get("rows"))]
    if len(rows) > LIMITS["list_rows"]:
        errors.append(f"{len(rows)} list rows; at most {LIMITS['list_rows']}")
    for row in rows:
        if len(_text(_obj(row).get("title"))) > LIMITS["row_title"]:
            errors.append(f"list row title over {LIMITS['row_title']} characters")
        if len(_text(_obj(row).get("description"))) > LIMITS["row_description"]:
            errors.append(f"list row description over {LIMITS['row_description']} characters")
    if inter.get("type") == "list" and len(_text(action.get("button"))) > LIMITS["list_button"]:
        errors.append(f"list button over {LIMITS['list_button']} characters")
    return errors


def structure_errors(p: dict[str, Any]) -> list[str]:
    """What the spec would catch first; used only when the spec file is missing."""
    errors = []
    if p.get("messaging_product") != "whatsapp":
        errors.append("messaging_product must be 'whatsapp'")
    if not _text(p.get("to")) and not _text(p.get("recipient")):
        errors.append("to (or recipient) is required")
    if p.get("type") not in KNOWN_TYPES:
        errors.append(f"type: {p.get('type')!r} is not one of {sorted(KNOWN_TYPES)}")
    elif not isinstance(p.get(p["type"]), dict):
        errors.append(f"{p['type']}: an object is required")
    return errors


def read_errors(payload: dict[str, Any]) -> list[str]:
    """Mark-as-read (with optional typing indicator): not a ``Message`` in the spec."""
    errors = []
    if payload.get("recipient_type") == "group":
        return ["mark as read is not supported in groups"]
    if payload.get("messaging_product") != "whatsapp":
        errors.append("messaging_product must be 'whatsapp'")
    if not _text(payload.get("message_id")):
        errors.append("message_id is required")
    typing = payload.get("typing_indicator")
    if typing is not None and typing != {"type": "text"}:
        errors.append("typing_indicator must be {'type': 'text'}")
    extra = set(payload) - _READ_KEYS
    if extra:
        errors.append(f"unexpected properties {sorted(extra)}")
    return errors


class SpecValidator:
    """Compiled once; ``validate_send`` returns error messages (empty list = valid).

    Why one validator per message type rather than the spec's 11-way ``oneOf``: it is several
    times faster (the egress benchmark runs against the simulator) and the error names the real
    problem instead of "not valid under any of the given schemas".
    """

    def __init__(self, spec_path: Path | None) -> None:
        self.spec_path = spec_path
        self._by_type: dict[str, Any] = {}
        if spec_path is not None:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            doc = yaml.load(spec_path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506
            components = doc["components"]["schemas"]
            root = components[_send_schema_name(doc)]
            for kind, ref in root["discriminator"]["mapping"].items():
                schema = _merge_all_of(_deref({"$ref": ref}, components))
                if isinstance(schema.get("properties"), dict):
                    schema["properties"] = {**schema["properties"], **CALLBACK_DATA}
                self._by_type[kind] = jsonschema.Draft202012Validator(schema)
        else:
            _warn_missing_once()

    @property
    def uses_spec(self) -> bool:
        """Whether Meta's schema is in force (False: limits and basic structure only)."""
        return bool(self._by_type)

    def validate_send(self, payload: Any) -> list[str]:
        """Every reason Meta would reject this body with code 100 (empty when it is valid)."""
        if not isinstance(payload, dict):
            return ["body must be a JSON object"]
        if payload.get("status") == "read":
            return read_errors(payload)
        errors = self._schema_errors(payload) if self._by_type else structure_errors(payload)
        return errors + limit_errors(payload)

    def _schema_errors(self, payload: dict[str, Any]) -> list[str]:
        kind = payload.get("type")
        validator = self._by_type.get(kind) if isinstance(kind, str) else None
        if validator is None:
            return [f"type: {kind!r} is not one of {sorted(self._by_type)}"]
        candidate = payload
        if "recipient" in payload and "to" not in payload:
            candidate = copy.copy(payload)
            candidate["to"] = candidate.pop("recipient")
        best = jsonschema.exceptions.best_match(validator.iter_errors(candidate))
        if best is None:
            return []
        where = "/".join(str(p) for p in best.absolute_path) or "(body)"
        return [f"{where}: {best.message[:300]}"]


def _warn_missing_once() -> None:
    global _warned_missing
    if not _warned_missing:
        _warned_missing = True
        log.warning(
            "WhatsApp OpenAPI spec not found (set %s): validating the brief's limits only",
            SPEC_ENV,
        )


@functools.lru_cache(maxsize=4)
def load_validator(path: str | None = None) -> SpecValidator:
    """The process-wide validator (compiling the spec takes ~0.3 s; do it once per path)."""
    return SpecValidator(find_spec(path) if path else find_spec())
