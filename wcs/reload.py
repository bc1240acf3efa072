"""SIGHUP: which settings change while running, and applying them to a running WCSService.

Keys that change live take effect for what happens next (the next request, publish or log
line); every other key needs a restart, and its new value is ignored until then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from twisted.web.resource import Resource

from wcs.config import PROPERTY_FIELDS, Settings
from wcs.hooks import NoHooks, RestHooks
from wcs.logs import LEVELS
from wcs.web.origin import OriginPolicy

if TYPE_CHECKING:
    from wcs.service import WCSService

__all__ = ["LIVE_KEYS", "apply", "changed_keys"]

# Property keys a SIGHUP applies at once.
LIVE_KEYS = frozenset(
    {
        "log_level",
        "metrics_auth",
        "rest_access_control_allow_origin",
        "disable_rest_auth",
        "rest_auth_user",
        "rest_auth_password",
        "rest_hook_url",
        "rest_hook_timeout_ms",
        "rest_hook_fail_open",
        "publish_password",
        "snapshot_auto_rate",
        "snapshot_auto_retention",
    }
)


def changed_keys(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """The property keys whose value differs: (applied live, needing a restart), each in the
    order of PROPERTY_FIELDS."""
    live: list[str] = []
    restart: list[str] = []
    for key, name in PROPERTY_FIELDS.items():
        if getattr(old, name) != getattr(new, name):
            (live if key in LIVE_KEYS else restart).append(key)
    return live, restart


def _resources(root: Resource) -> Iterator[Resource]:
    seen: set[int] = set()
    todo = [root]
    while todo:
        resource = todo.pop()
        if id(resource) in seen:
            continue
        seen.add(id(resource))
        yield resource
        todo.extend(getattr(resource, "children", {}).values())


def _retarget_site(site: Any, old: Settings, new: Settings) -> None:
    """Every resource of `site` that was built with `old` now reads `new` (REST auth, CORS),
    and origin checks follow the CORS origin."""
    if site is None:
        return
    policy = OriginPolicy.from_settings(new)
    for resource in _resources(site.resource):
        if getattr(resource, "settings", None) is old:
            resource.settings = new  # type: ignore[attr-defined]
        doors = getattr(resource, "doors", None)
        if doors is not None:
            doors.origins = policy
        if isinstance(getattr(resource, "origins", None), OriginPolicy):
            resource.origins = policy  # type: ignore[attr-defined]
    if hasattr(site, "refusal_headers"):
        cors = new.rest_access_control_allow_origin
        site.refusal_headers = ((b"Access-Control-Allow-Origin", cors.encode()),) if cors else ()


def apply(service: WCSService, loaded: Settings) -> tuple[list[str], list[str]]:
    """Apply the live keys of `loaded` to `service`; return (applied, ignored until restart).
    The service keeps the running values of the keys that need a restart."""
    old = service.settings
    live, restart = changed_keys(old, loaded)
    if not live:
        return live, restart
    new = dataclasses.replace(
        old, **{PROPERTY_FIELDS[k]: getattr(loaded, PROPERTY_FIELDS[k]) for k in live}
    )
    service.settings = new
    if service.log_filter is not None:
        service.log_filter.level = LEVELS[new.log_level]
    for site in service.sites:
        _retarget_site(site, old, new)
    access = service.access
    access.publish_password = new.publish_password
    if any(key.startswith("rest_hook_") for key in live):
        # The old app's pooled keep-alive connections are closed; the next question opens one.
        pool = getattr(getattr(access.hooks, "agent", None), "_pool", None)
        if pool is not None:
            pool.closeCachedConnections()
        access.hooks = (
            RestHooks(
                service.reactor,
                new.rest_hook_url,
                new.rest_hook_timeout_ms / 1000.0,
                new.rest_hook_fail_open,
            )
            if new.rest_hook_url
            else NoHooks()
        )
    if service.rtsp_factory is not None:
        service.rtsp_factory.play_auth, service.rtsp_factory.publish_auth = service.rtsp_auths(new)
    auto = service.auto
    if auto is not None:
        auto.rate, auto.retention = new.snapshot_auto_rate, new.snapshot_auto_retention
        for stream in auto.streams.values():
            stream.rate = new.snapshot_auto_rate
            stream.folder.retention = new.snapshot_auto_retention
    return live, restart
