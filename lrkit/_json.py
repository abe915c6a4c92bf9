"""JSON helpers shared by the result types (stdlib only): JSON has no NaN or infinity."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

__all__ = ["brief_repr", "finite_or_none", "finite_or_string", "read_object"]


def brief_repr(name: str, **values: Any) -> str:
    """``name(key=value, ...)`` in a line or two: floats to 4 significant digits, a sequence of
    more than 4 items as ``<n items>``, a mapping as ``<n keys>``. The result types' ``repr``
    (a notebook that shows ``res`` printed all of its curve: 9,271 characters for a range
    test); ``to_dict()`` and the fields keep everything."""
    def short(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            if len(v) > 4:
                return f"<{len(v)} items>"
            inner = ", ".join(short(x) for x in v)
            if isinstance(v, list):
                return f"[{inner}]"
            return f"({inner}{',' if len(v) == 1 else ''})"
        if isinstance(v, dict):
            return f"<{len(v)} keys>"
        return repr(v)

    return f"{name}({', '.join(f'{k}={short(v)}' for k, v in values.items())})"


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None``, recursively through
    dicts, lists and tuples (tuples become lists), ready for ``json.dumps(allow_nan=False)``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def finite_or_string(obj: Any) -> Any:
    """``obj`` with every non-finite float as its string (``"nan"``, ``"inf"``, ``"-inf"``),
    recursively through dicts, lists and tuples (tuples become lists): strict JSON that still
    says which non-finite value it was (the training logs' convention)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: finite_or_string(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_string(v) for v in obj]
    return obj


def read_object(text_or_path: Any, kind: str, keys: Iterable[str]) -> dict:
    """The JSON object in ``text_or_path`` (a JSON string, or a path to a file holding one),
    which must hold ``keys`` (``kind``, e.g. ``"RangeTestResult"``, names what was expected).
    Text that is neither JSON nor a file, invalid JSON, and another object are ValueErrors
    that say which (they were a FileNotFoundError on the text, a JSONDecodeError, a KeyError).
    """
    if not isinstance(text_or_path, (str, os.PathLike)):
        raise TypeError(f"text_or_path must be a JSON string or a path, got "
                        f"{type(text_or_path).__name__}")
    text, where = str(text_or_path), "the JSON text"
    if not text.lstrip().startswith(("{", "[")):
        if not os.path.isfile(text):
            raise ValueError(f"text_or_path is neither a JSON object nor an existing file: "
                             f"{text[:80]!r}")
        with open(text, encoding="utf-8") as fh:
            text, where = fh.read(), repr(str(text_or_path))
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e})") from None
    keys = list(keys)
    if not isinstance(d, dict) or not set(keys) <= d.keys():
        raise ValueError(f"{where} is not a {kind}'s JSON ({kind}.to_json writes an object "
                         f"with {', '.join(repr(k) for k in keys)})")
    return d
