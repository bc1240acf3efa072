"""The REST stream and pull objects (WCS field names), and the fields consumers add to a
stream's object: the hub carries media, its REST view lives here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final
from weakref import WeakKeyDictionary

from wcs.streams import Stream, StreamHub

if TYPE_CHECKING:
    from wcs.rtsp.pull import Pull

# The extra field's value for a stream, or None when the stream has no such field.
Describer = Callable[[Stream], object]

# The stream object's fields a pull object repeats (stream_json is their one definition).
PULL_STREAM_FIELDS: Final = (
    "mediaSessionId",
    "hasVideo",
    "hasAudio",
    "videoCodec",
    "audioCodec",
    "width",
    "height",
    "createDate",
    "mediaProvider",
)


def stream_json(stream: Stream, extras: Mapping[str, object] | None = None) -> dict[str, object]:
    """The stream object of the WCS REST API (and of WebSDK stream events)."""
    video = stream.video
    return {
        "mediaSessionId": stream.media_session_id,
        "name": stream.name,
        "published": not stream.ended,
        "hasVideo": stream.has_video,
        "hasAudio": stream.has_audio,
        "status": stream.status,
        "videoCodec": video.codec if video else None,
        "audioCodec": stream.audio_codec,
        "width": video.width if video else 0,
        "height": video.height if video else 0,
        "createDate": stream.created_ms,
        "mediaProvider": stream.provider,
        "record": False,
        **(extras or {}),
    }


def pull_json(pull: Pull) -> dict[str, object]:
    """The pull object of /rtsp/startup and /rtsp/find_all: the stream's own fields, with the
    pull's status and what it adds."""
    stream = stream_json(pull.stream)
    return {
        "uri": pull.uri,
        "toStream": pull.name,
        "localStreamName": pull.name,
        **{key: stream[key] for key in PULL_STREAM_FIELDS},
        "status": pull.status,
        "info": pull.info,
        "reconnects": pull.reconnects,
    }


class StreamViews:
    """Stream objects with the extra fields consumers describe (e.g. "autoSnapshot").

    An ended stream keeps its extra fields as they were at its end (the consumers let go of
    it then); they are held by a weak reference, so they go when the stream goes.
    """

    def __init__(self, hub: StreamHub | None = None) -> None:
        self._describers: dict[str, Describer] = {}
        self._final: WeakKeyDictionary[Stream, dict[str, object]] = WeakKeyDictionary()
        if hub is not None:
            # Before any consumer's observer, so the extras freeze before consumers let go.
            hub.add_observer(self.watch)

    def describe(self, key: str, describer: Describer) -> None:
        """Add field `key` to every stream object, `describer(stream)` (None: left out)."""
        self._describers[key] = describer

    def watch(self, stream: Stream) -> None:
        stream.on_end(self._freeze)

    def extras(self, stream: Stream) -> dict[str, object]:
        if stream.ended:
            return dict(self._final.get(stream, {}))
        return self._described(stream)

    def stream_json(self, stream: Stream) -> dict[str, object]:
        return stream_json(stream, self.extras(stream))

    def _described(self, stream: Stream) -> dict[str, object]:
        described = ((key, describer(stream)) for key, describer in self._describers.items())
        return {key: value for key, value in described if value is not None}

    def _freeze(self, stream: Stream) -> None:
        extras = self._described(stream)
        if extras:
            self._final[stream] = extras
