"""A minimal WebSDK-speaking WebSocket client (the SDK's JSON frames over wsproto on asyncio
streams, no browser), for the tests that talk to a real `twistd wcs` as a WebSDK page does."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from tests.integration.conftest import Server

TIMEOUT = 20.0


class WSClient:
    """A minimal WebSDK-speaking WebSocket client (the SDK's frames, no browser)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.inbox: asyncio.Queue[tuple[str, list[Any]] | None] = asyncio.Queue()
        self.pings = 0
        self._text = ""
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str) -> WSClient:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        client = cls(reader, writer)
        writer.write(client.ws.send(Request(host=parts.netloc, target=parts.path or "/")))
        while True:
            data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert data, "server closed during the WebSocket handshake"
            client.ws.receive_data(data)
            events = list(client.ws.events())
            if any(isinstance(e, RejectConnection) for e in events):
                raise AssertionError("WebSocket upgrade rejected")
            if any(isinstance(e, AcceptConnection) for e in events):
                break
        client._task = asyncio.ensure_future(client._pump())
        return client

    async def _pump(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.inbox.put_nowait(None)
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self._text += event.data
                    if event.message_finished:
                        frame = json.loads(self._text)
                        self._text = ""
                        self.inbox.put_nowait((frame["message"], frame["data"]))
                elif isinstance(event, Ping):
                    self.writer.write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.inbox.put_nowait(None)
                    return

    def send(self, message: str, obj: object) -> None:
        text = json.dumps({"message": message, "data": [obj]})
        self.writer.write(self.ws.send(TextMessage(data=text)))

    async def expect(self, message: str, **match: object) -> list[Any]:
        """The next frame named `message` whose data[0] has the `match` fields; answers pings."""
        while True:
            item = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
            assert item is not None, f"server closed the socket while waiting for {message}"
            name, data = item
            assert isinstance(data, list), f"{name}: data is not an array"
            if name == "ping":
                self.pings += 1
                self.send("pong", None)
                continue
            if name == message:
                obj = data[0] if data else None
                if all(isinstance(obj, dict) and obj.get(k) == v for k, v in match.items()):
                    return data

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()


@asynccontextmanager
async def session(server: Server) -> AsyncIterator[WSClient]:
    client = await WSClient.connect(server.ws + "/" + uuid.uuid4().hex[:8])
    try:
        client.send("connection", {"appKey": "defaultApp", "mediaProviders": ["WebRTC"]})
        (user,) = await client.expect("getUserData")
        assert user["status"] == "ESTABLISHED" and user["authToken"]
        assert user["appKey"] == "defaultApp"
        await client.expect("getVersion")
        yield client
    finally:
        await client.close()


async def ws_snapshot(client: WSClient, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    msid = str(uuid.uuid4())
    client.send("snapshot", {"name": name, "mediaSessionId": msid})
    (event,) = await client.expect("notifyStreamEvent", mediaSessionId=msid)
    (status,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
    return event, status
