"""A stand-in IP camera for integration tests: gst-rtsp-server serving an H.264 test pattern.

Runs under the system python (/usr/bin/python3 has PyGObject); prints `READY <url>` when listening.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from typing import Any

log = logging.getLogger("rtsp_camera")

REALM = "IP Camera"
ROLE = "viewer"


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, not {text!r}")
    width, height = int(m[1]), int(m[2])
    # x264 wants even dimensions for 4:2:0; the limits keep a typo from exhausting memory.
    if not (16 <= width <= 7680 and 16 <= height <= 4320) or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"size out of range or odd: {text!r}")
    return width, height


def parse_path(text: str) -> str:
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", text):
        raise argparse.ArgumentTypeError(f"path must look like /stream1, not {text!r}")
    return text


def bounded_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} not in [{low}, {high}]")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--address", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=bounded_int(0, 65535), default=0, help="0: any free port")
    p.add_argument("--path", type=parse_path, default="/stream1")
    p.add_argument("--size", type=parse_size, default=(1280, 720), help="WIDTHxHEIGHT")
    p.add_argument("--fps", type=bounded_int(1, 120), default=30)
    p.add_argument("--gop", type=bounded_int(1, 1000), default=30, help="frames between IDRs")
    p.add_argument("--bitrate", type=bounded_int(100, 50000), default=2048, help="kbit/s")
    p.add_argument(
        "--pattern", default="smpte", help="videotestsrc pattern nick (smpte, ball, red...)"
    )
    p.add_argument("--overlay", action="store_true", help="burn the running time into the picture")
    p.add_argument("--user")
    p.add_argument("--password")
    method = p.add_mutually_exclusive_group()
    method.add_argument("--digest", dest="method", action="store_const", const="digest")
    method.add_argument("--basic", dest="method", action="store_const", const="basic")
    p.set_defaults(method="digest")
    args = p.parse_args(argv)
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    return args


def launch_line(args: argparse.Namespace) -> str:
    """The media pipeline, in gst-launch syntax; the payloader must be called pay0."""
    width, height = args.size
    elements = [
        f"videotestsrc is-live=true pattern={args.pattern}",
        f"video/x-raw,width={width},height={height},framerate={args.fps}/1",
    ]
    if args.overlay:
        elements.append("timeoverlay font-desc=Sans,24")
    elements += [
        "videoconvert",
        "video/x-raw,format=I420",
        # No B-frames and a fixed GOP, as cameras send. One slice per picture: zerolatency's
        # sliced threads plus config-interval=-1 put SPS/PPS before *each* IDR slice (GStreamer
        # 1.22), which splits every IDR into two half-grey pictures for ffmpeg.
        "x264enc tune=zerolatency speed-preset=ultrafast sliced-threads=false"
        f" key-int-max={args.gop} bitrate={args.bitrate}",
        "video/x-h264,profile=baseline",
        # SPS/PPS with every IDR, so a client joining the shared media mid-stream can decode.
        "rtph264pay name=pay0 pt=96 config-interval=-1",
    ]
    return "( " + " ! ".join(elements) + " )"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="rtsp_camera %(levelname)s %(message)s"
    )

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

    Gst.init(None)
    launch = launch_line(args)
    # The factory builds the pipeline lazily, on the first DESCRIBE; build it once now so a bad
    # --pattern fails here with a message instead of as a 503 in some test.
    try:
        Gst.parse_launch(launch.strip("() "))
    except GLib.Error as err:
        log.error("bad pipeline %s: %s", launch, err.message)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        auth.set_realm(REALM)
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
        if args.method == "digest":
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            auth.add_digest(args.user, args.password, token)
        else:
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        # No default token: anonymous requests get 401. Only ROLE may see and build the media.
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(
            ROLE, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True
        )
        permissions.add_permission_for_role(
            ROLE, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True
        )
        factory.set_permissions(permissions)

    server.get_mount_points().add_factory(args.path, factory)

    def on_client(_server: Any, client: Any) -> None:
        conn = client.get_connection()
        log.info("client connected from %s", conn.get_ip() if conn else "?")

    server.connect("client-connected", on_client)

    loop = GLib.MainLoop()
    try:
        source_id = server.attach(None)
    except GLib.Error as err:
        log.error("cannot listen on %s:%s: %s", args.address, args.port, err.message)
        return 1
    if not source_id:
        log.error("cannot listen on %s:%s", args.address, args.port)
        return 1

    def stop(signame: str) -> bool:
        log.info("%s: stopping", signame)
        loop.quit()
        return GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, stop, signal.Signals(signum).name)

    port = server.get_bound_port()
    host = "127.0.0.1" if args.address in ("0.0.0.0", "127.0.0.1") else args.address
    log.info(
        "serving %s %dx%d@%d gop=%d auth=%s",
        args.pattern,
        *args.size,
        args.fps,
        args.gop,
        args.method if args.user is not None else "none",
    )
    sys.stdout.write(f"READY rtsp://{host}:{port}{args.path}\n")
    sys.stdout.flush()
    loop.run()
    GLib.Source.remove(source_id)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
