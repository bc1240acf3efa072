"""Registers `twistd wcs`; the service itself is built lazily by wcs.tap."""

from twisted.application.service import ServiceMaker

wcs = ServiceMaker("wcs", "wcs.tap", "WCS-compatible streaming server with PNG snapshots", "wcs")
