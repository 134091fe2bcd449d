"""The agent's OpenAPI 3.1 document (served at ``GET /openapi.json``).

Kept next to the routes it describes (:mod:`.agent`); ``tests/test_agent.py`` calls
every path it lists, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_SUBJECT = {
    "type": "object",
    "description": "A person (id_number) or an entity (uscc and/or org_code).",
    "properties": {
        "id_number": {"type": "string", "description": "18-character resident ID number"},
        "uscc": {"type": "string", "description": "unified social credit code"},
        "org_code": {"type": "string", "description": "organisation code"},
        "name": {"type": "string"},
        "officers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "id_number"],
                "properties": {
                    "role": {"type": "string"},
                    "id_number": {"type": "string"},
                    "name": {"type": "string"},
                },
            },
        },
    },
}
_ERROR = {
    "type": "object",
    "required": ["error", "kind"],
    "properties": {"error": {"type": "string"}, "kind": {"type": "string"}},
}
_DECISION = {
    "type": "object",
    "description": "Decision.to_dict(): action (block, review, monitor, allow), reasons, "
    "matches, list_version, stale ... never a plaintext ID number.",
    "required": ["action", "measure"],
    "properties": {"action": {"enum": ["block", "review", "monitor", "allow"]}},
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    text = {
        "400": "invalid input (bad identifier, unknown measure, malformed JSON)",
        "401": "missing or wrong bearer token (when the agent has one)",
        "413": "request body too large",
        "503": "no verified list yet (never synced)",
    }
    return {c: _json(_ERROR, text[c]) for c in codes}


def _post(summary: str, body: dict[str, Any], ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": _json(ok), **_errors("400", "401", "413", "503")},
        }
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The document, for agent ``version``."""
    check_body = {
        "type": "object",
        "required": ["measure", "subject"],
        "properties": {"measure": {"type": "string"}, "subject": _SUBJECT},
    }
    block_body = {
        **check_body,
        "properties": {
            **check_body["properties"],  # type: ignore[dict-item]
            "context": {"type": "object", "description": "report details, e.g. room"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "intercept-sdk agent",
            "version": version,
            "description": "Local decisions from the verified list of dishonest judgment "
            "debtors; every decision is audited, every interception reported.",
        },
        "paths": {
            "/v1/check": _post("The decision for one subject", check_body, _DECISION),
            "/v1/block": _post(
                "Check, and on block report the interception",
                block_body,
                {
                    "type": "object",
                    "required": ["intercepted", "decision"],
                    "properties": {
                        "intercepted": {"type": "boolean"},
                        "decision": _DECISION,
                        "notice": {"type": "string", "description": "Chinese notice text"},
                        "report_id": {"type": ["string", "null"]},
                    },
                },
            ),
            "/v1/screen": _post(
                "Decisions for many subjects, in order; a bad subject is an error item",
                {
                    "type": "object",
                    "required": ["measure", "subjects"],
                    "properties": {
                        "measure": {"type": "string"},
                        "subjects": {"type": "array", "items": _SUBJECT, "maxItems": 10000},
                    },
                },
                {
                    "type": "object",
                    "properties": {
                        "decisions": {"type": "array", "items": {"oneOf": [_DECISION, _ERROR]}}
                    },
                },
            ),
            "/v1/report": _post(
                "Queue a signed report (objection, lift, ...) durably",
                {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {
                        "kind": {"type": "string"},
                        "entry_id": {"type": "string"},
                        "details": {"type": "object"},
                    },
                },
                {"type": "object", "properties": {"report_id": {"type": "string"}}},
            ),
            "/v1/status": {
                "get": {
                    "summary": "Client status (list version, staleness, errors, outbox)",
                    "responses": {"200": _json({"type": "object"}), **_errors("401")},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: 200 with a verified, fresh list, else 503",
                    "responses": {
                        "200": _json({"type": "object"}),
                        "503": _json({"type": "object"}, "not ready"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition",
                    "responses": {
                        "200": {"description": "OK", "content": {"text/plain": {}}},
                        **_errors("401"),
                    },
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({})}}},
        },
    }
