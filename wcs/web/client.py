"""What wcs's HTTP clients (REST hooks, cluster forwarding) share about Twisted's Agent."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived


def stale_connection(failure: Failure) -> bool:
    """Whether a request failed on a pooled connection the server had closed meanwhile, before
    any of it was answered, so it is safe to send once more on a new connection. (An HTTP/1.0
    app such as Python's http.server closes after each answer, and Twisted's pool keeps the
    connection; a keep-alive server closes an idle one.) A timeout or any other fault is not."""
    if not failure.check(ResponseNeverReceived, RequestTransmissionFailed):
        return False
    reasons = getattr(failure.value, "reasons", [])
    return bool(reasons) and all(r.check(ConnectionDone, ConnectionLost) for r in reasons)
