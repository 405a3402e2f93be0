"""Logging set up from libvirtd's log_level, log_filters and log_outputs knobs.

The syntax is libvirt's (libvirtd.conf, "Logging controls"), so an
administrator's settings carry over:

- level: 1 debug, 2 info, 3 warning, 4 error;
- outputs: space-separated ``LEVEL:stderr``, ``LEVEL:file:PATH``,
  ``LEVEL:syslog:IDENT`` or ``LEVEL:journald`` (journald goes to syslog's
  socket here: no libsystemd);
- filters: space-separated ``LEVEL:NAME``; a record whose logger name contains
  NAME is kept when at least that severe, whatever the global level (libvirt
  matches source file names; we match logger names such as
  ``pyvirtd.client``).  A leading ``+`` (libvirt's "with stack trace") is
  accepted and ignored.

The admin program can change outputs and filters at run time
(virt-admin daemon-log-outputs / daemon-log-filters).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogSettingError(ValueError):
    """A log_outputs or log_filters string that does not parse."""


def _level(text: str, what: str) -> int:
    try:
        return LEVELS[int(text)]
    except (ValueError, KeyError):
        raise LogSettingError(f"invalid log level '{text}' in {what}") from None


def parse_outputs(spec: str) -> list[logging.Handler]:
    handlers: list[logging.Handler] = []
    for item in spec.split():
        parts = item.split(":", 2)
        if len(parts) < 2:
            raise LogSettingError(f"invalid log output '{item}'")
        level = _level(parts[0], f"output '{item}'")
        kind = parts[1]
        if kind == "stderr":
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        elif kind == "file" and len(parts) == 3 and parts[2]:
            handler = logging.FileHandler(parts[2])
        elif kind in ("syslog", "journald"):
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            ident = parts[2] if len(parts) == 3 and parts[2] else "pyvirtd"
            handler.ident = f"{ident}: "
        else:
            raise LogSettingError(f"invalid log output '{item}'")
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter(FORMAT))
        handlers.append(handler)
    return handlers


class NameFilter(logging.Filter):
    """Per-name minimum levels (log_filters); other records use the global level."""

    def __init__(self, rules: list[tuple[str, int]], default: int) -> None:
        super().__init__()
        self.rules = rules
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        for name, level in self.rules:
            if name in record.name:
                return record.levelno >= level
        return record.levelno >= self.default


def parse_filters(spec: str) -> list[tuple[str, int]]:
    rules = []
    for item in spec.split():
        level, sep, name = item.partition(":")
        if not sep or not name:
            raise LogSettingError(f"invalid log filter '{item}'")
        rules.append((name.lstrip("+"), _level(level, f"filter '{item}'")))
    return rules


def configure(level: int, outputs: str = "", filters: str = "", *, verbose: bool = False) -> None:
    """(Re)configure the root logger; raises LogSettingError on bad syntax."""
    default = logging.DEBUG if verbose else LEVELS.get(level, logging.WARNING)
    handlers = parse_outputs(outputs) if outputs else parse_outputs(f"{level}:stderr")
    rules = parse_filters(filters) if filters else []
    name_filter = NameFilter(rules, default)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        if verbose:
            handler.setLevel(logging.DEBUG)
        handler.addFilter(name_filter)
        root.addHandler(handler)
    # the filter decides per name; let every record reach it
    root.setLevel(min([default, *(lvl for _, lvl in rules)]))
