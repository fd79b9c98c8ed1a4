"""The exceptions inferd raises; the API layer maps each to an HTTP status in one place."""

from __future__ import annotations


class InferdError(Exception):
    """Base of every error inferd reports to a client."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class UpstreamError(InferdError):
    """A model process's refusal, raised again in the server so it leaves in the shape of the
    API the client called (Ollama's, Anthropic's) with the engine's status and words."""

    def __init__(self, status: int, error: dict) -> None:
        super().__init__(str(error.get("message", "")), param=error.get("param"))
        self.status_code = status
        self.error_type = str(error.get("type") or "invalid_request_error")
        self.code = error.get("code") if isinstance(error.get("code"), str) else None


class InvalidRequest(InferdError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedOperation(InvalidRequest):
    """The model (or its engine) cannot do what was asked, e.g. chat on an embedding model."""

    code = "unsupported_operation"


class NotFound(InferdError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class Unauthorized(InferdError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(InferdError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class RequestTooLarge(InferdError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class TooManyRequests(InferdError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after


class Conflict(InferdError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class ModelFilesUnavailable(InvalidRequest):
    code = "model_files_unavailable"


class LaunchFailed(InvalidRequest):
    """The model process could not load the model; the message carries the model's own reason."""

    code = "launch_failed"


class EnvBuildFailed(LaunchFailed):
    """An engine's environment could not be built; the message carries the installer's reason."""

    code = "engine_env_failed"


class ModelUnavailable(InferdError):
    """The model exists but cannot answer now (loading, or its process died)."""

    status_code = 503
    error_type = "service_unavailable"
    code = "model_unavailable"


class RequestAborted(Conflict):
    """The request was aborted through the abort API while it ran, or was blocked beforehand."""

    code = "request_aborted"

    def __init__(self, request_id: str):
        super().__init__(f"request {request_id!r} was aborted", param="request_id")


class RequestTimedOut(InferdError):
    """The answer took longer than the server lets one request take (INFERD_REQUEST_TIMEOUT)."""

    status_code = 504
    error_type = "timeout_error"
    code = "request_timeout"
