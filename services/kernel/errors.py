"""One exception tree for every service, rendered in OpenAI's error format.

Handlers raise a `GatewayError` subclass; `error_response` turns it into
`{"error": {"message", "type", "param", "code"}}` with the right status. Messages
never carry secrets: callers pass names (env var, deployment), never key values.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    """Base class: an error with an HTTP status and an OpenAI error type."""

    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"
    retryable: bool = False  # another deployment may succeed where this one failed

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The provider failed or answered with something unusable."""

    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class ClientClosed(GatewayError):
    """The client went away before the answer was complete (nginx's 499); recorded, never sent."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class ShuttingDown(GatewayError):
    """The process is stopping and could not finish this answer in its drain time."""

    status = 503
    type = "api_error"
    code = "gateway_shutdown"


def error_response(exc: GatewayError, request_id: str | None = None) -> Response:
    headers = dict(exc.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return Response(
        orjson.dumps(exc.body()),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )
