"""Why the service refuses a request, without HTTP: the service methods raise these with a one-line reason and
the HTTP layer alone turns each kind into a status code (``workers/http_api.py``); and ``ServiceError``, why the
service cannot start or go on. Kept apart from the supervisor so that `vidrec serve`'s usage errors are reported
without importing the workers, models and clients."""
from __future__ import annotations


class ServiceError(Exception):
    """The service cannot start or go on (a worker failed to start, the HTTP address is taken...): one line."""


class RequestRefused(Exception):
    """A request the service does not carry out; ``str(exc)`` is the one-line reason shown to the client."""


class Invalid(RequestRefused):
    """The request itself is wrong (a bad field, an unknown stream kind, a missing image)."""


class NotFound(RequestRefused):
    """What the request names does not exist (a stream id, a gallery label)."""


class Conflict(RequestRefused):
    """The request clashes with the current state (a stream id in use, an image already in the gallery)."""


class Unavailable(RequestRefused):
    """The service cannot do it now (starting, draining, another gallery change under way): try again."""


class Failed(RequestRefused):
    """The service tried and failed (a gallery worker died, a configured folder is missing)."""


class TimedOut(RequestRefused):
    """The service gave up waiting for a worker doing the request."""
