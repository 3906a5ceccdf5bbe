"""The OpenAPI 3.1 document of the admin API, generated from the route tables.

Why generated: request and response schemas come from the pydantic models that validate and
serialize the real traffic (``model_json_schema``), and paths from the same :class:`Route`
list the router is built from, so the document is always the API that runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from admin import schemas as s
from admin.api import Route
from store.repo import SECRET_FIELDS

REF = "#/components/schemas/{model}"

PATH_PARAMS: dict[str, dict[str, Any]] = {
    "bot_id": {"type": "integer", "minimum": 1, "description": "The bot's id."},
    "config_id": {"type": "integer", "minimum": 1, "description": "The chat config's id."},
    "secret": {"type": "string", "enum": list(SECRET_FIELDS), "description": "Which secret."},
    "user_id": {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "description": "The user's BSUID when known, else their wa_id (URL-encoded).",
    },
    "tenant_id": {
        "type": "string",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        "description": "The tenant's id.",
    },
}

ERROR_TEXT = {
    400: "Invalid request (malformed JSON, unknown fields, invalid values, text with NUL "
    "characters or unpaired surrogates, or rules across fields)",
    401: "Missing or invalid bearer token",
    403: "The token's role may not do this",
    404: "No such object (or it belongs to another tenant)",
    409: "Conflict with an existing object",
    503: "A dependency (the Kafka broker) is unavailable; nothing was changed, retry",
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        for name, sub in schema.pop("$defs", {}).items():
            self.components.setdefault(name, sub)
        self.components.setdefault(model.__name__, schema)
        return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        op["description"] = route.description
    params = [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name]}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    for q in route.query:
        schema: dict[str, Any] = {"type": "integer" if q.kind is int else "string"}
        if q.minimum is not None:
            schema["minimum"] = q.minimum
        if q.maximum is not None:
            schema["maximum"] = q.maximum
        if q.default is not None:
            schema["default"] = q.default
        param = {"name": q.name, "in": "query", "required": False, "schema": schema}
        if q.description:
            param["description"] = q.description
        params.append(param)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.ref(route.body, "validation")}},
        }
    responses: dict[str, Any] = {}
    if route.status == 204 or route.response is None:
        responses[str(route.status)] = {"description": "Done (no content)"}
    else:
        text = "Accepted" if route.status == 202 else "OK"
        responses[str(route.status)] = _json(schemas.ref(route.response, "serialization"), text)
        if route.operation_id == "putUserLink":
            responses["201"] = _json(schemas.ref(route.response, "serialization"), "Created")
    error = schemas.ref(s.Error, "serialization")
    codes = set(route.errors) | ({400} if route.body is not None or route.query else set())
    if not route.public:
        codes.add(401)
    for code in sorted(codes):
        responses[str(code)] = _json(error, ERROR_TEXT[code])
    op["responses"] = responses
    if route.public:
        op["security"] = []
    return op


def build_openapi(routes: Iterable[Route], *, title: str = "onyx-wa admin API") -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes`` plus the fixed health and document endpoints."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    routes = tuple(routes)
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    health = schemas.ref(s.Health, "serialization")
    ready = schemas.ref(s.Ready, "serialization")
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness",
            "tags": ["health"],
            "security": [],
            "responses": {"200": _json(health, "Alive")},
        }
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: database reachable and migrated",
            "tags": ["health"],
            "security": [],
            "responses": {"200": _json(ready, "Ready"), "503": _json(ready, "Not ready")},
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["health"],
            "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 document")},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": (
                "Bots, chat configs and user links of onyx-wa. Bearer tokens: operator (every "
                "tenant) or tenant admin (own tenant; other tenants' objects answer 404). "
                "Secrets are write-only. Every change is in the audit log."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from ONYX_WA_ADMIN_TOKENS.",
                }
            },
        },
        "tags": [
            {"name": name}
            for name in dict.fromkeys(
                ("auth", "bots", "chat-configs", "user-links", "audit", *(r.tag for r in routes))
            )
            if name != "health"
        ]
        + [{"name": "health"}],
    }
