"""`GET /health` (the process answers) and `GET /ready` (it can serve): for load balancers and
orchestrators, outside /rest-api and without credentials (they tell nothing about streams)."""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.web import http, server
from twisted.web.resource import Resource

# Why the server cannot serve yet (or any more), or None when it can.
Readiness = Callable[[], str | None]


class Degraded(str):
    """A readiness reason that means "serving, but not all of it" (the cluster directory is
    unreachable): /ready answers 503 with status "degraded"."""


def _answer(request: server.Request, status: int, obj: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    # A probe must see the state now, never a cached answer.
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(obj, separators=(",", ":")).encode()


class _Probe(Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        if request.postpath and any(request.postpath):
            return _answer(request, http.NOT_FOUND, {"status": "not found"})
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _answer(request, http.NOT_ALLOWED, {"status": "method not allowed"})
        return self.probe(request)

    def probe(self, request: server.Request) -> bytes:
        raise NotImplementedError


class Health(_Probe):
    """Alive: the reactor turns and answers HTTP."""

    def probe(self, request: server.Request) -> bytes:
        return _answer(request, http.OK, {"status": "ok"})


class Ready(_Probe):
    """Ready: every listener bound, the worker pool running and the cluster directory reachable;
    503 with the reason otherwise."""

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self.readiness = readiness

    def probe(self, request: server.Request) -> bytes:
        reason = self.readiness()
        if reason is None:
            return _answer(request, http.OK, {"status": "ready"})
        status = "degraded" if isinstance(reason, Degraded) else "not ready"
        return _answer(request, http.SERVICE_UNAVAILABLE, {"status": status, "reason": str(reason)})
