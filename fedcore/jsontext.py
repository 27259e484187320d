"""JSON text from outside the process, with every decoding failure a ValueError."""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes | bytearray, **options: Any) -> Any:
    """Decode JSON text, raising ValueError for anything that is not valid JSON.

    ``json.loads`` raises ValueError for bad syntax, bad UTF-8 and integers longer
    than Python's int parsing limit, but RecursionError for arrays or objects
    nested deeper than the interpreter's recursion limit. This turns the latter into
    a ValueError too, so callers catch one exception. ``options`` go to
    ``json.loads``.

    Raises
    ------
    ValueError
        If ``data`` is not valid JSON.
    """
    try:
        return json.loads(data, **options)
    except RecursionError as exc:
        raise ValueError(
            "JSON is nested deeper than Python's recursion limit allows"
        ) from exc
