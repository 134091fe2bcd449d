"""The two small error answers every part of the server gives the same way."""

from __future__ import annotations

from starlette.responses import JSONResponse, PlainTextResponse, Response

__all__ = ["error", "not_found"]


def not_found() -> Response:
    """404 that no cache may keep: an artefact may be published a moment later."""
    return PlainTextResponse("not found\n", 404, headers={"Cache-Control": "no-store"})


def error(status: int, message: str, *, retry_after: int | None = None) -> Response:
    """``{"error": message}`` with ``status`` (and ``Retry-After`` when given)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message}, status, headers=headers)
