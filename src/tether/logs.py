"""tether's log events (job started, steps, survivors...) at no cost when unused.

The engine and the job call :func:`log` with a logger name under ``tether``
and event fields (``job_id``, ``pid``, ``signal``...). :mod:`logging` is
imported only once a record will really be written: when the CLI asked for
logs (:func:`configure`), or when the application had already imported
logging, so its own configuration decides (the usual library contract: a
``NullHandler`` on ``tether`` keeps an unconfigured application quiet).
``tether run -- true`` therefore pays nothing for logging by default.

The CLI's settings come from ``--log-level/--log-format/--log-target`` or,
for epilogues and daemons that cannot easily change a command line,
``TETHER_LOG_LEVEL/TETHER_LOG_FORMAT/TETHER_LOG_TARGET``; flags win.
"""

from __future__ import annotations

import sys

from tether._records import NamedTuple
from tether.errors import UsageError

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# The stdlib's numeric levels, without importing logging for them.
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}
FORMATS = ("text", "json")
TARGETS = ("stderr", "syslog", "journald", "auto")
LEVEL_VAR = "TETHER_LOG_LEVEL"
FORMAT_VAR = "TETHER_LOG_FORMAT"
TARGET_VAR = "TETHER_LOG_TARGET"
ROOT = "tether"


class _State:
    #: The CLI's level once :func:`configure` ran; None: the application decides.
    threshold: int | None = None
    #: The NullHandler is on the ``tether`` logger.
    library_ready = False


_state = _State()


class LogSettings(NamedTuple):
    """Where and how the CLI logs. ``requested``: any option or variable was given.

    A NamedTuple rather than a dataclass: half the cost at import, on every run.
    """

    level: str = "warning"
    format: str = "text"
    target: str = "auto"
    requested: bool = False


def resolve(
    level: str | None, fmt: str | None, target: str | None, env: Mapping[str, str]
) -> LogSettings:
    """Flags over environment over defaults; a bad value is a UsageError naming its source."""
    chosen: list[str] = []
    requested = False
    for flag, var, given, allowed, default in (
        ("--log-level", LEVEL_VAR, level, tuple(LEVELS), "warning"),
        ("--log-format", FORMAT_VAR, fmt, FORMATS, "text"),
        ("--log-target", TARGET_VAR, target, TARGETS, "auto"),
    ):
        source = flag
        value = given
        if value is None and env.get(var):
            value, source = env[var], var
        if value is None:
            chosen.append(default)
            continue
        requested = True
        if value.lower() not in allowed:
            raise UsageError(f"{source}: {value!r} is not one of {', '.join(allowed)}")
        chosen.append(value.lower())
    return LogSettings(chosen[0], chosen[1], chosen[2], requested)


def configure(settings: LogSettings, env: Mapping[str, str]) -> str | None:
    """Send tether's records where ``settings`` say; what the target is.

    Nothing is set up (and logging is not imported) unless logs were
    requested: by default the commands' own messages carry every warning.
    """
    if not settings.requested:
        return None
    import logging

    from tether.log_handlers import make_handler

    handler, what = make_handler(settings.format, settings.target, env)
    logger = logging.getLogger(ROOT)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(LEVELS[settings.level])
    logger.propagate = False
    _state.threshold = LEVELS[settings.level]
    return what


def failure() -> str | None:
    """Why records configured by :func:`configure` could not be sent, if so."""
    if _state.threshold is None:
        return None
    import logging

    for handler in logging.getLogger(ROOT).handlers:
        problem = getattr(handler, "failure", None)
        if problem:
            return str(problem)
    return None


def enabled(level: int, name: str = ROOT) -> bool:
    """Would a record at ``level`` on logger ``name`` be written? Cheap when not."""
    if _state.threshold is not None:
        return level >= _state.threshold
    logging = sys.modules.get("logging")
    if logging is None:
        return False  # nobody can have configured a logger
    return bool(logging.getLogger(name).isEnabledFor(level))


def log(name: str, level: int, msg: str, **fields: object) -> None:
    """Log ``msg`` with event ``fields`` on logger ``name`` (under ``tether``), if enabled."""
    if not enabled(level, name):
        return
    import logging

    from tether.log_handlers import FIELDS_ATTR
    from tether.sanitize import log_field

    # Messages and fields carry process names, argv and remote text: escaped
    # here too, for an application's own handlers (tether.sanitize).
    msg = log_field(msg)
    fields = {k: log_field(v) if isinstance(v, str) else v for k, v in fields.items()}

    if not _state.library_ready:
        root = logging.getLogger(ROOT)
        if not root.handlers:
            root.addHandler(logging.NullHandler())
        _state.library_ready = True
    # stacklevel 2: CODE_FILE/CODE_LINE name the engine's call, not this helper.
    logging.getLogger(name).log(level, msg, extra={FIELDS_ATTR: fields}, stacklevel=2)
