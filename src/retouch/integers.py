"""Integers from untrusted text (query strings, form fields, headers).

``str.isdigit()`` and ``int()`` both accept far more than ASCII digits: ``'²'.isdigit()`` is
true yet ``int('²')`` raises, and ``int()`` takes Arabic-Indic digits, ``1_000`` and Unicode
spaces. Every integer a client sends goes through ``ascii_int`` instead, so the accepted
spelling is exactly ``[+-]?[0-9]+`` and anything else is the caller's clear 400.
"""

from __future__ import annotations

import re

_UNSIGNED = re.compile(r"[0-9]{1,40}", re.ASCII)
_SIGNED = re.compile(r"[+-]?[0-9]{1,40}", re.ASCII)
_ASCII_SPACE = " \t"


def ascii_int(raw: str | None, *, signed: bool = False) -> int | None:
    """The integer spelled by ``raw`` (ASCII digits, an optional sign when ``signed``, outer
    spaces and tabs ignored), or ``None`` for anything else. At most 40 digits: longer numbers
    are not meant, and the cap keeps ``int()`` cheap."""
    if raw is None:
        return None
    text = raw.strip(_ASCII_SPACE)
    pattern = _SIGNED if signed else _UNSIGNED
    if pattern.fullmatch(text) is None:
        return None
    return int(text)
