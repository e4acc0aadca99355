"""Turns pydantic validation errors into one safe (reason, field path) pair that never echoes the input."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from clinstream.core.dlq import Rejection

_MAX_REASON = 200
# Keys the client made up (e.g. an unexpected field) are echoed only if they look like field names.
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Error types whose pydantic message quotes the input value; they get a fixed message instead.
_QUOTING = {
    "union_tag_invalid": "unknown kind: {tags}",
    "union_tag_not_found": "the discriminator field is missing: one of {tags}",
}


def field_path(prefix: str, loc: Sequence[int | str]) -> str:
    """`blocks[3]` + ('values', 7) -> `blocks[3].values[7]`."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = part if _FIELD_NAME.match(part) else "<unknown field>"
        out += f".{name}" if out else name
    return out


def first_rejection(exc: ValidationError, prefix: str, *, tag_field: str | None = None,
                    tag_values: Sequence[str] = ()) -> Rejection:
    """The first error of a validation failure, as a rejection with the full field path.

    With a discriminated union, pydantic puts the tag into locations; `tag_field` is the JSON key of the
    discriminator and `tag_values` its values, so that paths point at real fields.
    """
    errors: list[Any] = exc.errors(include_url=False, include_input=False, include_context=False)
    err = errors[0]
    loc: list[int | str] = [part for part in err["loc"] if not (isinstance(part, str) and part in tag_values)]
    etype = str(err["type"])
    if etype in _QUOTING:
        return Rejection(_QUOTING[etype].format(tags=", ".join(tag_values)),
                         field_path(prefix, [*loc, tag_field or "kind"]))
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return Rejection((msg[:_MAX_REASON] + more), field_path(prefix, loc))
