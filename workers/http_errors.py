"""Refusals in HTTP terms: the HTTP layer's own (``ApiError``, with its status) and the status of each of the
service's refusal kinds (``workers/service_errors.py``), which carry no HTTP."""
from __future__ import annotations

from http import HTTPStatus

from workers.service_errors import Conflict, Failed, Invalid, NotFound, RequestRefused, TimedOut, Unavailable


class ApiError(Exception):
    """A request the HTTP layer refuses: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


_REFUSAL_STATUS: dict[type[RequestRefused], HTTPStatus] = {
    Invalid: HTTPStatus.BAD_REQUEST, NotFound: HTTPStatus.NOT_FOUND, Conflict: HTTPStatus.CONFLICT,
    Unavailable: HTTPStatus.SERVICE_UNAVAILABLE, Failed: HTTPStatus.INTERNAL_SERVER_ERROR,
    TimedOut: HTTPStatus.GATEWAY_TIMEOUT,
}


def status_of(exc: Exception) -> int:
    """The status code of a refusal: the HTTP layer's own ``ApiError`` carries one, the service's kinds map."""
    if isinstance(exc, ApiError):
        return exc.status
    return _REFUSAL_STATUS.get(type(exc), HTTPStatus.BAD_REQUEST)
