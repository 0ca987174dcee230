"""Build the OpenAPI 3 document from the declared operations."""

from __future__ import annotations

import re
from typing import Any

from server.http.api import Operation
from server.services.auth import ANYONE

_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}}}},
}

# The Open Inference Protocol's own error shape: {"error": "message"}.
V2_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def build_openapi(operations: list[Operation], version: str) -> dict[str, Any]:
    """Return an OpenAPI 3.1 document; each operation carries its minimum role as x-min-role and where it finds
    its model as x-model-scope (server/http/scope.py)."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA, "V2Error": V2_ERROR_SCHEMA}
    for op in operations:
        path = _PARAM.sub(lambda m: "{" + m.group(2) + "}", op.rule)
        params = [
            {"name": m.group(2), "in": "path", "required": True,
             "schema": {"type": "integer" if m.group(1) == "int" else "string"}}
            for m in _PARAM.finditer(op.rule)
        ]
        if op.query is not None:
            for fname, f in op.query.model_fields.items():
                schema = op.query.model_json_schema()["properties"][fname]
                params.append({"name": fname, "in": "query", "required": f.is_required(), "schema": schema})
        entry: dict[str, Any] = {
            "operationId": f"{op.tag}_{op.endpoint}",
            "summary": op.summary,
            "tags": [op.tag],
            "x-min-role": op.role,
            "x-model-scope": op.scope,
            "parameters": params,
            "responses": {
                str(op.status): {"description": "success"},
                **{code: {"description": text} for code, text in op.responses.items()},
                "default": {"description": "error", "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/V2Error" if op.rule.startswith("/v2") else "#/components/schemas/Error"}}}},
            },
        }
        entry["security"] = [] if op.role == ANYONE else [{"bearer": []}]
        if op.body is not None:
            body_schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body_schema.pop("$defs", {}))
            schemas[op.body.__name__] = body_schema
            entry["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}}}
        elif op.request_schema is not None:
            entry["requestBody"] = {"required": True, "content": op.request_schema}
        paths.setdefault(path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "ModelDeck Service API", "version": version,
                 "description": "Upload models and call them through RabbitMQ and Celery worker pools."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (mdk_...) or a Keycloak access token"}}},
    }
