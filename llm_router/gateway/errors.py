"""One error shape for every endpoint, as OpenAI's: ``{"error": {"type", "code", "message", "param"}}`` with
a stable ``code`` (invalid_request, unauthorised, not_found, rate_limited, timeout, unavailable, no_worker,
and job_failed for a job that did not succeed)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from llm_router.broker.jobs import UnknownJob
from llm_router.broker.publishing import EnqueueFailed
from llm_router.tasks.errors import InvalidRequest
from llm_router.tasks.store import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)
UNPARSABLE_BODY = "There was an error parsing the body"

TYPES = {
    "invalid_request": "invalid_request_error",
    "unauthorised": "authentication_error",
    "not_found": "invalid_request_error",
    "rate_limited": "rate_limit_error",
    "timeout": "timeout_error",
    "unavailable": "server_error",
    "no_worker": "server_error",  # no live worker consumes the queue the request would wait on
    "job_failed": "server_error",  # the job ended failed, rejected, cancelled or expired: the message says
}
STATUS = {
    "invalid_request": 400,
    "unauthorised": 401,
    "not_found": 404,
    "rate_limited": 429,
    "timeout": 504,
    "unavailable": 503,
    "no_worker": 503,
    "job_failed": 502,
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.message, self.param, self.headers = code, message, param, headers or {}


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": TYPES[code], "code": code, "message": message, "param": param}}


def error_response(code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse(error_body(code, message, param), status_code=STATUS[code], headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> Any:
        return error_response(exc.code, exc.message, exc.param, exc.headers)

    @app.exception_handler(InvalidRequest)
    async def _invalid(_: Request, exc: InvalidRequest) -> Any:
        return error_response("invalid_request", str(exc), exc.field)

    @app.exception_handler(UnknownJob)
    async def _unknown(_: Request, exc: UnknownJob) -> Any:
        return error_response("not_found", str(exc), "job_id")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            reason = (first.get("ctx") or {}).get("error", "JSON decode error")
            return error_response("invalid_request", f"body: not JSON ({reason})", "body")
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        return error_response("invalid_request", f"{param or 'body'}: {first.get('msg', 'invalid')}", param)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Any:
        code = {404: "not_found", 401: "unauthorised", 405: "invalid_request"}.get(exc.status_code, "invalid_request")
        if exc.status_code == 400 and exc.detail == UNPARSABLE_BODY:  # FastAPI's, for JSON it could not read
            return error_response("invalid_request", "body: not JSON, or nested too deeply", "body")
        response = error_response(code, str(exc.detail))
        response.status_code = exc.status_code
        return response

    @app.exception_handler(EnqueueFailed)
    async def _enqueue(_: Request, exc: EnqueueFailed) -> Any:
        return error_response("unavailable", "the broker refused the job; try again")

    for kind in DATABASE_UNAVAILABLE:

        @app.exception_handler(kind)
        async def _database(_: Request, exc: Exception) -> Any:
            log.warning("database unavailable: %s", type(exc).__name__)
            return error_response("unavailable", "the database cannot be reached; try again")
