"""Who may connect, publish and play, the same for every protocol: `publish_password` and the
WCS-style REST hooks. Front-ends ask and wait; a refusal carries the text the client is told."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from wcs.hooks import Hooks, NoHooks, Refused
from wcs.limits import LogThrottle
from wcs.streams import Stream

__all__ = ["FAILURE_DELAY", "INFO_BAD_PASSWORD", "Access", "Client", "Refused"]

log = Logger(namespace="wcs.access")

# Every failed password waits this long before the refusal, so guessing is slow; the reactor
# keeps serving everyone else meanwhile.
FAILURE_DELAY = 1.0
INFO_BAD_PASSWORD = "Invalid publish password"


@dataclass(frozen=True)
class Client:
    """One client connection (RTMP, RTSP) or WebSDK session, as the hook app sees it."""

    session_id: str  # WCS style: "/<peer host>:<port>/<local host>:<port>"
    provider: str  # "Flash", "RTSP", "WebRTC"
    address: str  # the peer's host
    app_key: str = ""
    custom: Mapping[str, Any] = field(default_factory=dict)
    auth_token: str = ""

    def with_custom(self, extra: Mapping[str, Any]) -> Client:
        """This client with a request's own `custom` fields over the connection's."""
        return replace(self, custom={**self.custom, **extra}) if extra else self

    @staticmethod
    def session_id_of(peer: Any, local: Any) -> str:
        def part(addr: Any) -> str:
            return f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"

        return f"/{part(peer)}/{part(local)}"


class Access:
    """The server's one gate: front-ends call connect/publish/play and wait for the Deferred."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        hooks: Hooks | None = None,
        publish_password: str | None = None,
        node_id: str | None = None,
    ) -> None:
        self.clock = clock
        self.hooks: Hooks = hooks if hooks is not None else NoHooks()
        self.publish_password = publish_password
        self.node_id = node_id or f"wcs-{uuid.uuid4().hex[:12]}"
        self.failed_passwords = 0
        # Failed attempts are logged rate-limited, never with the password itself.
        self._failures = LogThrottle(clock, log)

    # -- asking -----------------------------------------------------------------------------------
    def _body(self, client: Client, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "nodeId": self.node_id,
            "appKey": client.app_key,
            "sessionId": client.session_id,
            "mediaProvider": client.provider,
            "clientAddress": client.address,
            "custom": dict(client.custom),
        }
        if client.auth_token:
            body["authToken"] = client.auth_token
        body.update(extra)
        return body

    def connect(self, client: Client) -> Deferred[dict[str, Any]]:
        """Once per client connection or session, before anything else it asks for."""
        return self.hooks.ask("connect", self._body(client))

    def publish(
        self,
        client: Client,
        name: str,
        media_session_id: str,
        password: str | None,
        *,
        authenticated: bool = False,
    ) -> Deferred[None]:
        """Before a publish is accepted: the publish password (unless the protocol checked it
        itself, `authenticated`: RTSP auth), then the hook."""
        body = self._body(client, name=name, mediaSessionId=media_session_id, published=True)
        checked = succeed(None) if authenticated else self.check_password(password)
        return checked.addCallback(lambda _: self.hooks.ask("publishStream", body)).addCallback(
            lambda _: None
        )

    def play(self, client: Client, name: str, media_session_id: str) -> Deferred[None]:
        body = self._body(client, name=name, mediaSessionId=media_session_id, published=False)
        return self.hooks.ask("playStream", body).addCallback(lambda _: None)

    # -- telling (after the fact, not awaited) ----------------------------------------------------
    def stream_status(
        self, client: Client, name: str, media_session_id: str, status: str, info: str = ""
    ) -> None:
        self.hooks.tell(
            "StreamStatusEvent",
            self._body(
                client, name=name, mediaSessionId=media_session_id, status=status, info=info
            ),
        )

    def unpublished(self, client: Client, name: str, media_session_id: str) -> None:
        self.hooks.tell(
            "unPublishStream", self._body(client, name=name, mediaSessionId=media_session_id)
        )

    def track(self, client: Client, stream: Stream) -> None:
        """An accepted publish: the app is told it is publishing now, and told again (status
        and unPublishStream) when it ends, whoever ends it."""
        if isinstance(self.hooks, NoHooks):
            return
        name, msid = stream.name, stream.media_session_id
        self.stream_status(client, name, msid, "PUBLISHING")

        def ended(ended_stream: Stream) -> None:
            self.stream_status(client, name, msid, "UNPUBLISHED", ended_stream.end_reason)
            self.unpublished(client, name, msid)

        stream.on_end(ended)

    # -- the publish password -------------------------------------------------------------------
    def password_matches(self, presented: str | None) -> bool:
        expected = self.publish_password
        if expected is None:
            return True
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8")
        )

    def check_password(self, presented: str | None) -> Deferred[None]:
        """Fires at once when the password is right; fails with Refused after FAILURE_DELAY."""
        if self.password_matches(presented):
            return succeed(None)
        return self.refuse_later(INFO_BAD_PASSWORD)

    def refuse_later(self, info: str) -> Deferred[None]:
        """A failed credential: counted, logged rate-limited, refused after FAILURE_DELAY."""
        self.failed_passwords += 1
        self._failures.warn(
            "publish refused: {info} ({count} failed attempts since start)",
            info=info,
            count=self.failed_passwords,
        )

        def refuse() -> None:
            raise Refused(info)

        return deferLater(self.clock, FAILURE_DELAY, refuse)
