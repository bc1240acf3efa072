"""Log level and format: a level filter that SIGHUP can change, and one JSON object per line.

twistd picks the log destination (`--logfile`, `--syslog`, `-n`); this module puts the level
filter in front of it and, for `log_format=json`, writes JSON to the same destination.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    PredicateResult,
    formatEvent,
)
from twisted.python import logfile
from zope.interface import implementer

__all__ = ["LEVELS", "LevelFilter", "build_observer", "event_as_json"]

# log_level values, lowest first.
LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]

# Keys of an event that are bookkeeping (twisted.logger's own and the legacy log.msg ones), not
# fields the code logged.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "format", "time", "why", "failure"})


@implementer(ILogFilterPredicate)
class LevelFilter:
    """Lets through events at `level` or above, and those logged with `log_always=True` (the
    `wcs ready:` line, reload results: what scripts and operators wait for); `level` may
    change while running (SIGHUP)."""

    def __init__(self, level: LogLevel = LogLevel.info) -> None:
        self.level = level

    def __call__(self, event: LogEvent) -> PredicateResult:
        if event.get("log_always"):
            return PredicateResult.maybe
        level = event.get("log_level", LogLevel.info)
        if level in _ORDER and _ORDER.index(level) < _ORDER.index(self.level):
            return PredicateResult.no
        return PredicateResult.maybe


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple) and len(value) <= 100:
        return [_jsonable(v) for v in value]
    if isinstance(value, dict) and len(value) <= 100:
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def event_as_json(event: LogEvent) -> str:
    """One line of JSON: time, level, namespace, the formatted text, then the event's own fields
    (stream names, reasons, counters) and a traceback if it carries a failure."""
    level = event.get("log_level", LogLevel.info)
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": (
            datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
            if isinstance(when, int | float)
            else None
        ),
        "level": level.name,
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
            continue
        record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _destination(twistd: Any) -> IO[str]:
    """Where twistd itself would write text logs (the same rules as its UnixAppLogger)."""
    name = twistd.get("logfile")
    if name == "-" or (twistd.get("nodaemon") and not name):
        return sys.stdout
    return logfile.LogFile.fromFullPath(name or "twistd.log")


def build_observer(twistd: Any, log_format: str, level_filter: LevelFilter) -> ILogObserver:
    """The observer for twistd's application: twistd's own text observer (or JSON lines to the
    same destination), behind `level_filter`."""
    if log_format == "json":
        if twistd.get("syslog"):
            raise SystemExit("wcs: log_format=json cannot be used with --syslog")
        if twistd.get("logfile") == "-" and not twistd.get("nodaemon"):
            raise SystemExit("Daemons cannot log to stdout, exiting!")
        inner: ILogObserver = FileLogObserver(_destination(twistd), event_as_json)
    else:
        from twisted.scripts._twistd_unix import UnixAppLogger

        # twistd's choice of file, rotation (SIGUSR1) and syslog, unchanged.
        inner = UnixAppLogger(twistd)._getLogObserver()
    return FilteringLogObserver(inner, [level_filter])
