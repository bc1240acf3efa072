"""The stream directory and the hub's publish through it: names claimed before a publish is
accepted, released when it ends, a late answer for a gone publisher."""

from __future__ import annotations

import pytest
from twisted.python.failure import Failure

from tests.unit.fakes import PendingDirectory, publish_now, result_now
from wcs.directory import InvalidName, LocalDirectory, NameInUse
from wcs.streams import PROVIDER_RTMP, Stream, StreamHub


def test_the_local_directory_holds_one_owner_per_name() -> None:
    directory = LocalDirectory()
    result_now(directory.claim("cam", "a"))
    result_now(directory.claim("cam", "a"))  # the same owner again: still its
    with pytest.raises(NameInUse):
        result_now(directory.claim("cam", "b"))
    result_now(directory.claim("door", "b"))
    assert result_now(directory.lookup("cam")) == "a"
    assert result_now(directory.list()) == {"cam": "a", "door": "b"}
    result_now(directory.release("cam", "b"))  # not b's: a late release frees nothing
    assert result_now(directory.lookup("cam")) == "a"
    result_now(directory.release("cam", "a"))
    assert result_now(directory.lookup("cam")) is None
    result_now(directory.claim("cam", "b"))


def test_a_publish_waits_for_the_directory_and_holds_the_name_meanwhile() -> None:
    directory = PendingDirectory()
    hub = StreamHub(directory=directory)
    published: list[Stream | Failure] = []
    hub.publish("cam", PROVIDER_RTMP, media_session_id="m1").addBoth(published.append)
    assert published == [] and hub.get("cam") is None
    # A second publish of the name on this hub is refused at once, without asking.
    with pytest.raises(NameInUse):
        publish_now(hub, "cam", PROVIDER_RTMP)
    assert [(n, o) for n, o, _ in directory.pending] == [("cam", "local/m1")]
    directory.grant("cam")
    [stream] = published
    assert isinstance(stream, Stream) and hub.get("cam") is stream
    assert result_now(directory.lookup("cam")) == "local/m1"
    stream.end()
    assert result_now(directory.lookup("cam")) is None  # released with the end
    assert hub.get("cam") is None


def test_a_name_the_directory_refuses_is_not_published_and_can_be_tried_again() -> None:
    directory = PendingDirectory()
    hub = StreamHub(directory=directory, node="n2")
    refused: list[Failure] = []
    hub.publish("cam", PROVIDER_RTMP).addErrback(refused.append)
    directory.refuse("cam")  # held by another node
    assert len(refused) == 1 and refused[0].check(NameInUse)
    assert hub.get("cam") is None and len(hub) == 0
    hub.publish("cam", PROVIDER_RTMP)
    assert [n for n, _, _ in directory.pending] == ["cam"]  # asked again, not refused here


def test_an_invalid_name_fails_without_asking_the_directory() -> None:
    directory = PendingDirectory()
    hub = StreamHub(directory=directory)
    with pytest.raises(InvalidName):
        publish_now(hub, "a/b", PROVIDER_RTMP)
    assert directory.pending == []


def test_a_republished_name_is_not_released_by_the_old_streams_end() -> None:
    hub = StreamHub()
    first = publish_now(hub, "cam", PROVIDER_RTMP, media_session_id="m1")
    first.end()
    second = publish_now(hub, "cam", PROVIDER_RTMP, media_session_id="m2")
    first.end()  # a second end of the old stream: nothing happens
    assert result_now(hub.directory.lookup("cam")) == "local/m2"
    assert hub.get("cam") is second
