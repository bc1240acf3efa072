"""An example REST hook app for wcs: stream keys per stream name, checked before every publish.

Run it beside the server and point `rest_hook_url` at it:

    python docs/examples/hook_app.py --port 8090 --keys keys.json
    # flashphoner.properties:  rest_hook_url=http://127.0.0.1:8090/hook

`keys.json` maps stream names to their publish keys, e.g. {"cam1": "s3cret", "lobby": "k2"}.
Publishers then send the key the way their protocol carries a query:

    ffmpeg ... -f flv 'rtmp://host:1935/live/cam1?key=s3cret'      (RTMP stream key query)
    ffmpeg ... -f rtsp 'rtsp://host:554/live/cam1?key=s3cret'      (RTSP URL query)
    session.createStream({name: "cam1", custom: {key: "s3cret"}})  (WebSDK)

wcs POSTs JSON to `<rest_hook_url>/<method>` and goes on only on a 2xx answer; anything else
refuses, and the answer's "info" is what the client is told. Methods:

- `connect`: once per client connection or WebSDK session (here: everyone may connect);
- `publishStream`: before a publish (here: the stream's key must match, unknown names refused);
- `playStream`: before a WebSDK or RTSP play (here: anyone may watch);
- `StreamStatusEvent`, `unPublishStream`: after the fact, not awaited (here: logged).

Every body carries nodeId, appKey, sessionId, mediaProvider, clientAddress, custom (the query or
the WebSDK custom object) and, when sent, authToken; publish and play add name and mediaSessionId.
Only the Python standard library is needed. Keep it on a private address: it decides who
publishes.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 64 * 1024
log = logging.getLogger("hook_app")


class Hooks:
    """The decisions: (status, answer) per method and body."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys

    def decide(self, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if method == "publishStream":
            return self.publish(body)
        if method in ("StreamStatusEvent", "unPublishStream"):
            log.info("%s %s %s", method, body.get("name"), body.get("status", ""))
        return 200, {}

    def publish(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = str(body.get("name", ""))
        custom = body.get("custom")
        given = str(custom.get("key", "")) if isinstance(custom, dict) else ""
        expected = self.keys.get(name)
        # Compared in constant time: the answer's timing tells nothing about the key.
        if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("publish of %r refused from %s", name, body.get("clientAddress"))
            return 403, {"info": "Wrong or missing stream key"}
        log.info("publish of %r allowed from %s", name, body.get("clientAddress"))
        return 200, {}


def handler_for(hooks: Hooks) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            method = self.path.rstrip("/").rsplit("/", 1)[-1]
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                self.answer(413, {"info": "Body too large"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self.answer(400, {"info": "Body is not JSON"})
                return
            if not isinstance(body, dict):
                self.answer(400, {"info": "Body is not a JSON object"})
                return
            self.answer(*hooks.decide(method, body))

        def answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--keys", type=Path, required=True, help="JSON: stream name -> key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    keys = json.loads(args.keys.read_text(encoding="utf-8"))
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise SystemExit(f"{args.keys}: expected a JSON object of stream name -> key")
    server = ThreadingHTTPServer((args.host, args.port), handler_for(Hooks(keys)))
    host, port = server.server_address[:2]
    log.info("hook app on http://%s:%d/ (%d stream keys)", host, port, len(keys))
    server.serve_forever()


if __name__ == "__main__":
    main()
