"""One error tree. Every refusal that reaches a client is a `FairmeterError`.

    FairmeterError                     status  code
    ├── InvalidApiKey                  401     invalid_api_key
    ├── InvalidRequest                 400     invalid_request
    ├── ModelNotFound                  404     model_not_found
    ├── RequestTooLarge                413     request_too_large
    ├── UnboundedRequest               400     unbounded_request
    ├── BudgetExceeded                 402     budget_exceeded
    ├── AllowanceExhausted             402     allowance_exhausted      (the payer's buckets cannot cover it)
    ├── AdminRequired                  403     admin_required           (fairmeter's admin API)
    ├── IdempotencyKeyInUse            409     idempotency_key_in_use   (the only retryable one)
    ├── NotFound                       404     not_found                (fairmeter's own API)
    └── MethodNotAllowed               405     method_not_allowed       (a known path, another method)

Each carries a sentence a person understands, with the numbers, and the request field it is about.
"""

from __future__ import annotations


class FairmeterError(Exception):
    """A refusal with an HTTP status, a stable code and a human sentence."""

    status: int = 400
    code: str = "invalid_request"
    retryable: bool = False

    def __init__(self, message: str, param: str | None = None, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details  # machine-readable numbers of the refusal, sent beside the message


class InvalidApiKey(FairmeterError):
    status = 401
    code = "invalid_api_key"


class InvalidRequest(FairmeterError):
    status = 400
    code = "invalid_request"


class ModelNotFound(FairmeterError):
    status = 404
    code = "model_not_found"


class RequestTooLarge(FairmeterError):
    status = 413
    code = "request_too_large"


class UnboundedRequest(FairmeterError):
    status = 400
    code = "unbounded_request"


class BudgetExceeded(FairmeterError):
    status = 402
    code = "budget_exceeded"


class AllowanceExhausted(FairmeterError):
    """The payer's funding buckets that are switched on cannot cover the call's hold (docs/funding.md).

    Never a 429 with Retry-After: the anthropic SDK would sleep for as long as it says.
    """

    status = 402
    code = "allowance_exhausted"


class AdminRequired(FairmeterError):
    status = 403
    code = "admin_required"


class IdempotencyKeyInUse(FairmeterError):
    status = 409
    code = "idempotency_key_in_use"
    retryable = True


class NotFound(FairmeterError):
    status = 404
    code = "not_found"


class ConfigError(Exception):
    """The configuration file or a command-line option is wrong; raised before serving."""


class MethodNotAllowed(FairmeterError):
    """A known path asked with a method it does not take; ``allow`` lists those it takes (the ``Allow`` header)."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, path: str, allow: list[str]) -> None:
        self.allow = sorted(allow)
        takes = " or ".join(self.allow)
        super().__init__(f"{path} takes {takes}, not {method}.")
