"""Fuzz target for the operator's input: the flashphoner.properties parser and validation."""

from __future__ import annotations

import contextlib

from tests.fuzz import target
from wcs.config import ConfigError, parse_properties, settings_from_properties


@target("properties")
def properties(data: bytes) -> None:
    # As load_settings decodes: UTF-8, else Latin-1 (which accepts any bytes).
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    with contextlib.suppress(ConfigError):
        settings_from_properties(parse_properties(text))
