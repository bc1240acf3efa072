"""A real REST hook app for the tests: a twisted.web server in its own process.

`python hook_app.py LOGFILE` listens on a free loopback port (printed as `READY <port>`) and
appends every request to LOGFILE as a JSON line {"method": ..., "body": ...}. It refuses (403 with
an "info") any name or custom.key starting with "deny", never answers a name starting with "slow",
and allows everything else.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource


class HookApp(Resource):
    isLeaf = True

    def __init__(self, log_path: str) -> None:
        super().__init__()
        self.log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def render_POST(self, request: server.Request) -> bytes | int:
        method = (request.path or b"").decode().rsplit("/", 1)[-1]
        assert request.content is not None
        body: dict[str, Any] = json.loads(request.content.read() or b"{}")
        self.log.write(json.dumps({"method": method, "body": body}) + "\n")
        request.setHeader(b"Content-Type", b"application/json")
        name = str(body.get("name", ""))
        custom = body.get("custom") or {}
        key = str(custom.get("key", "")) if isinstance(custom, dict) else ""
        if name.startswith("slow"):
            return server.NOT_DONE_YET  # never answered: the server's timeout decides
        if name.startswith("deny") or key.startswith("deny"):
            request.setResponseCode(403)
            return json.dumps({"info": f"Denied by test app ({method})"}).encode()
        return json.dumps({}).encode()


def main() -> None:
    site = server.Site(HookApp(sys.argv[1]))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
    print(f"READY {port.getHost().port}", flush=True)  # type: ignore[attr-defined]
    reactor.run()


if __name__ == "__main__":
    main()
