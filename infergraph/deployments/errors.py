"""OpenAI-shaped JSON errors, so SDKs raise their usual typed exceptions."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """Raise anywhere in the router to answer with an OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


UNREAD_BODY_CLOSE_BYTES = 64 * 1024  # an unread body up to this size is cheaper to drain than a reconnect


def mark_body_read(request: Request) -> None:
    """Called once the request's body has been read to its end."""
    request.state.body_read = True


def leaves_body_unread(request: Request) -> bool:
    """Whether answering now leaves a large, or endless, body unread.

    The HTTP server (uvicorn) reads and drops an unread body to keep the connection alive: a 401 or a
    413 sent at once still cost reading every byte the client chose to send, and a chunked body that
    never ends was read for as long as the client kept sending. Such answers close the connection.
    """
    if getattr(request.state, "body_read", False):
        return False
    declared = request.headers.get("content-length")
    if declared is None:
        return "chunked" in request.headers.get("transfer-encoding", "").lower()
    return not declared.isdigit() or int(declared) > UNREAD_BODY_CLOSE_BYTES


def _closing_if_unread(request: Request, response: Response) -> Response:
    if leaves_body_unread(request):
        response.headers["Connection"] = "close"
    return response


def describe_validation_error(exc: RequestValidationError | Exception) -> tuple[str, str | None]:
    """First pydantic error as (message, param), e.g. ("input: Input should be a valid string", "input")."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return str(exc), None
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid request")).removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    """Turn FastAPI/Starlette errors into the OpenAI error shape (and 422 into 400, as OpenAI does);
    an error answered before a large body was read closes the connection (`leaves_body_unread`)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        response = error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)
        return _closing_if_unread(request, response)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        message, param = describe_validation_error(exc)
        return _closing_if_unread(request, error_response(400, message, param, "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        response = error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
        return _closing_if_unread(request, response)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        response = error_response(500, f"internal error: {type(exc).__name__}", code="internal_error")
        return _closing_if_unread(request, response)
