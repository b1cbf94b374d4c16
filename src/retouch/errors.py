"""One error hierarchy for the whole server.

Every failure a client can see is a ``RetouchError``. Each class carries the HTTP status, the
OpenAI error ``type`` and a string ``code``; an instance adds the ``param`` and the public message.
Only ``retouch.api.errors`` turns them into OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``::

    RetouchError
    ├── InvalidRequest (400 invalid_request_error)
    │   ├── UnknownParameter          code unknown_parameter
    │   ├── MissingParameter          code missing_required_parameter
    │   ├── InvalidValue              code invalid_value
    │   ├── InvalidImage              code invalid_image_file / unsupported_file_mimetype / ...
    │   ├── InvalidMask               code invalid_mask_image_format / mask_size_mismatch
    │   └── UnsupportedInstruction    code unsupported_instruction (the engine cannot do the prompt)
    ├── PayloadTooLarge (413)
    ├── AuthenticationFailed (401)
    ├── PermissionDenied (403)
    ├── NotFound (404)
    ├── Conflict (409 idempotency_key_in_use: the same Idempotency-Key is still running)
    ├── Unprocessable (422 idempotency_key_reused: same Idempotency-Key, different request)
    ├── RateLimited (429 rate_limit_exceeded, Retry-After)
    ├── QuotaExceeded (429 insufficient_quota, x-should-retry: false)
    ├── QueueFull (429 server_overloaded, Retry-After)
    ├── QueueTimeout (504 queue_timeout: waited too long for the engine)
    ├── RunTimeout (504 run_timeout: the engine ran past the model's run deadline)
    ├── EngineFailed (500)
    └── ServiceUnavailable (503)
"""

from __future__ import annotations

from collections.abc import Mapping


class RetouchError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def error_object(self) -> dict[str, str | None]:
        """OpenAI's ``ErrorObject``: all four keys, ``code`` a string or null."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def body(self) -> dict[str, object]:
        return {"error": self.error_object()}


class InvalidRequest(RetouchError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnknownParameter(InvalidRequest):
    code = "unknown_parameter"

    def __init__(self, name: str, detail: str = "") -> None:
        message = f"Unknown parameter: '{name}'." + (f" {detail}" if detail else "")
        super().__init__(message, param=name)


class MissingParameter(InvalidRequest):
    code = "missing_required_parameter"

    def __init__(self, name: str) -> None:
        super().__init__(f"Missing required parameter: '{name}'.", param=name)


class InvalidValue(InvalidRequest):
    code = "invalid_value"


class InvalidImage(InvalidRequest):
    code = "invalid_image_file"


class InvalidMask(InvalidRequest):
    code = "invalid_mask_image_format"


class UnsupportedInstruction(InvalidRequest):
    code = "unsupported_instruction"


class PayloadTooLarge(RetouchError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class AuthenticationFailed(RetouchError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(RetouchError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(RetouchError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(RetouchError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Unprocessable(RetouchError):
    status = 422
    type = "invalid_request_error"
    code = "unprocessable"


class RateLimited(RetouchError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExceeded(RetouchError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.headers.setdefault("x-should-retry", "false")


class QueueFull(RetouchError):
    status = 429
    type = "server_overloaded"
    code = "queue_full"


class QueueTimeout(RetouchError):
    status = 504
    type = "server_error"
    code = "queue_timeout"


class RunTimeout(RetouchError):
    status = 504
    type = "server_error"
    code = "run_timeout"


class EngineFailed(RetouchError):
    status = 500
    type = "server_error"
    code = "engine_error"


class ServiceUnavailable(RetouchError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class Cancelled(Exception):
    """Raised inside an engine when its client went away; never reaches a client."""


class ClientLeft(Exception):
    """The client disconnected (during the upload or while waiting for its response); the
    request ends with a 499 ledger row and an info log line, never a client-visible error."""


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1, at most 120) plus ``retry-after-ms``."""
    clamped = min(max(seconds, 0.001), 120.0)
    return {"retry-after": str(max(1, round(clamped))), "retry-after-ms": str(max(1, int(clamped * 1000)))}
