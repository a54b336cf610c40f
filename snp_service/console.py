"""What reaches a person's console from Ray (issue 29, item 9), kept to what they can act on.

- Ray 2.60 enables token authentication for a new local cluster, and for a client when a token
  exists, and warns about it on every command; `token_auth_quietly` makes the same decision
  explicitly (RAY_AUTH_MODE=token), which Ray then respects without the warning. A mode the user set
  is left as it is.
- Progress bars (Ray's tqdm integration) only when the driver's output is a terminal: written to a
  file they arrive through Ray's log forwarding as escape codes and carriage returns (SNP_BARS, set
  by the CLI and inherited by the workers of a local Ray it starts; unset means no bars).
- With output to a file, Ray's log prefixes are not coloured (RAY_COLOR_PREFIX=0) and the escape
  codes Ray writes into its own "View the dashboard at ..." line are removed.
"""

from __future__ import annotations

import logging
import os
import re
import sys

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BARS_ENV = "SNP_BARS"


class _NoEscapes(logging.Filter):
    """Removes terminal escape codes from a log record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = ESCAPES.sub("", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(ESCAPES.sub("", a) if isinstance(a, str) else a for a in record.args)
        return True


_FILTER = _NoEscapes()


def configure(quiet: bool, stream=None) -> None:
    """Called by the CLI before anything starts Ray: bars only on a terminal (and not --quiet);
    plain text from Ray when the output is a file or a pipe."""
    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    os.environ[BARS_ENV] = "1" if tty and not quiet else "0"
    if not tty:
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        ray_logger = logging.getLogger("ray._private.worker")
        if _FILTER not in ray_logger.filters:
            ray_logger.addFilter(_FILTER)


def bars_enabled() -> bool:
    return os.environ.get(BARS_ENV) == "1" and os.environ.get("SNP_QUIET") != "1"


def token_auth_quietly(new_cluster: bool) -> None:
    """Ray's own token-authentication decision, made before Ray makes it (and warns): a new local
    cluster uses a token (Ray 2.60's default; Ray creates one if missing); a client of an existing
    cluster uses one when a token exists (~/.ray/auth_token or RAY_AUTH_TOKEN*)."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return  # the user's choice
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # another Ray: its own defaults apply
        return
    try:
        if not new_cluster and not setup.AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
            return
        setup._enable_token_auth()  # RAY_AUTH_MODE=token, and Ray's cached config refreshed
    except (AttributeError, TypeError):
        return
