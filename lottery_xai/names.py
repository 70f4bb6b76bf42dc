"""The one way an unknown name is reported: the message, then the close matches or a fallback."""
from __future__ import annotations

import difflib
from typing import Iterable

from .errors import UserError


def close_matches(name, known: Iterable, n: int = 3, cutoff: float = 0.5) -> list[str]:
    return difflib.get_close_matches(str(name), [str(k) for k in known], n=n, cutoff=cutoff)


def suggestion(name, known: Iterable, *, n: int = 3, cutoff: float = 0.5, otherwise: str = "") -> str:
    """``"did you mean 'a', 'b'?"`` for the close matches of ``name`` among ``known``, else ``otherwise``."""
    close = close_matches(name, known, n, cutoff)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else otherwise


def unknown_name(message: str, name, known: Iterable, *, n: int = 3, cutoff: float = 0.5,
                 otherwise: str = "") -> UserError:
    """A one-line UserError: ``message``, then ``; did you mean ...?`` or ``; otherwise`` (nothing if empty)."""
    hint = suggestion(name, known, n=n, cutoff=cutoff, otherwise=otherwise)
    return UserError(f"{message}; {hint}" if hint else message)
