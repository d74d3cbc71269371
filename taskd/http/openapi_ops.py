"""The OpenAPI paths of the probes and the API reference page; merged into `taskd.http.openapi`."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _json(schema: str, description: str) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def paths() -> dict[str, Any]:
    """`/livez`, `/readyz`, `/docs` and its files; none needs a key."""
    return {
        "/livez": {
            "get": {
                "summary": "Liveness probe: the process answers (no key, no Redis)",
                "operationId": "livez",
                "security": [],
                "responses": {"200": _json("Probe", "`alive`")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness probe: Redis answers and every queue this node serves has a polling worker",
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": _json("Probe", "`ready`"),
                    "503": _json("Error", "`service_unavailable`: what is not ready, with `retry_after`"),
                },
            }
        },
        "/docs": {
            "get": {
                "summary": "This document in Swagger UI, served offline",
                "operationId": "api_docs_page",
                "security": [],
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/docs/{asset}": {
            "get": {
                "summary": "A script, stylesheet or icon of the /docs page",
                "operationId": "api_docs_asset",
                "security": [],
                "parameters": [
                    {"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "The file", "content": {"*/*": {"schema": {}}}},
                    "404": _json("Error", "`not_found`: no such file"),
                },
            }
        },
    }
