"""The JSON error body of the WCS REST API, identical in shape for every status."""

from __future__ import annotations

import json
import time

from twisted.web.http import RESPONSES

_EXCEPTION = "com.flashphoner.rest.server.exception."
_EXCEPTIONS = {
    400: "BadRequestException",
    401: "UnauthorizedException",
    403: "ForbiddenException",
    404: "NotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictException",
    413: "PayloadTooLargeException",
    415: "UnsupportedMediaTypeException",
    500: "InternalErrorException",
    503: "ServiceUnavailableException",
}


class RestError(Exception):
    """An error answered to a REST client with `status` and `message`; `code` (a snapshot's
    machine-readable reason) is added to the body as "code", `headers` to the response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def error_body(
    status: int, message: str, path: str, now_ms: int | None = None
) -> dict[str, object]:
    """The WCS error object, keys in the order WCS sends them."""
    ts = int(time.time() * 1000) if now_ms is None else now_ms
    exception = _EXCEPTION + _EXCEPTIONS.get(status, "InternalErrorException")
    error = RESPONSES.get(status, b"Error").decode("ascii")
    return {
        "exception": exception,
        "reason": f"{exception}, {error}, {message}, ts: {ts}, path: {path}",
        "path": path,
        "error": error,
        "message": message,
        "timestamp": ts,
        "status": status,
    }


def error_json(status: int, message: str, path: str, code: str | None = None) -> bytes:
    """The WCS error object as the compact JSON bytes every REST error answers with; `code`
    is added last when given."""
    body = error_body(status, message, path)
    if code is not None:
        body["code"] = code
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
