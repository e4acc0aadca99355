"""The gateway's error answers: one exception type carrying the HTTP status, a stable code and a safe detail."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """JSON body of every error answer. `detail` and `field_path` never repeat identifiers or secrets."""

    error: str = Field(description="Stable machine-readable code, e.g. 'malformed_json', 'broker_unavailable'.")
    detail: str = Field(description="Human-readable explanation.")
    field_path: str | None = Field(default=None, description="Path of the offending field, e.g. 'blocks[3].unit'.")


class ApiError(Exception):
    """A request the gateway answers with an error status instead of accepting it."""

    def __init__(self, status: int, error: str, detail: str, *, field_path: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field_path = field_path
        self.headers = dict(headers or {})

    def body(self) -> ErrorBody:
        """The JSON body of the answer."""
        return ErrorBody(error=self.error, detail=self.detail, field_path=self.field_path)


def unavailable(detail: str, retry_after_s: int, error: str = "broker_unavailable") -> ApiError:
    """503 with Retry-After: the request was not accepted and may be sent again unchanged."""
    return ApiError(503, error, detail, headers={"Retry-After": str(retry_after_s)})
