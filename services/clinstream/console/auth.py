"""The console's admin token (from a file or the environment) and the session cookie derived from it."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from clinstream.core.constants import CONSOLE_MIN_TOKEN_CHARS, CONSOLE_TOKEN_ENV

COOKIE = "clinstream_console"


class TokenError(RuntimeError):
    """The admin token is missing or too short."""


def load_token(token_file: Path | None) -> str:
    """The token from `token_file`, else from $CLINSTREAM_CONSOLE_TOKEN; at least CONSOLE_MIN_TOKEN_CHARS long."""
    if token_file is not None:
        token = token_file.read_text().strip()
        source = str(token_file)
    else:
        token = os.environ.get(CONSOLE_TOKEN_ENV, "").strip()
        source = f"${CONSOLE_TOKEN_ENV}"
    if not token:
        raise TokenError(f"no console admin token: pass --token-file or set ${CONSOLE_TOKEN_ENV}")
    if len(token) < CONSOLE_MIN_TOKEN_CHARS:
        raise TokenError(f"the console admin token from {source} is shorter than {CONSOLE_MIN_TOKEN_CHARS} chars")
    return token


def session_value(token: str) -> str:
    """The cookie value a browser holds after logging in: an HMAC of a fixed label under the token."""
    return hmac.new(token.encode(), b"clinstream-console-session", hashlib.sha256).hexdigest()


def token_matches(token: str, offered: str) -> bool:
    """Constant-time comparison of an offered token."""
    return hmac.compare_digest(token.encode(), offered.encode())


def session_matches(token: str, cookie: str) -> bool:
    """Constant-time check of a session cookie."""
    return hmac.compare_digest(session_value(token).encode(), cookie.encode())
