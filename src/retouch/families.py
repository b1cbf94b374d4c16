"""OpenAI's image model names and the rules each family follows: the one table to change when
OpenAI ships a model.

A new snapshot of a known model needs nothing (any ``-YYYY-MM-DD`` suffix is accepted); a new
name with an existing family's rules is one line in ``OPENAI_MODELS``; a family with new rules
is one ``Family`` in ``FAMILIES`` (plus its name in ``ApiFamily``). ``service/params.py`` reads
these rules; nothing else spells out which model takes what.

A leaf module (no retouch imports), so ``config`` can name the families too.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Literal

ApiFamily = Literal["dall-e-2", "gpt-image", "gpt-image-2", "gpt-image-2.5", "gpt-image-2.6", "native"]
SizeRule = Literal["dall-e-2", "fixed", "free", "native"]
UrlRule = Literal["default", "allowed", "setting"]
UsageRule = Literal["none", "table", "gpt-image-2"]

_BASE = ("png", "jpeg", "webp")
_NEWEST = (*_BASE, "gif", "svg")
_LMH = ("low", "medium", "high")
_LMHXM = (*_LMH, "xhigh", "max")


@dataclass(frozen=True)
class Family:
    """What requests to a model of this family may carry, and how they are answered."""

    name: ApiFamily
    sizes: SizeRule
    """``dall-e-2``: 256/512/1024 squares; ``fixed``: 1024x1024, 1536x1024, 1024x1536 + auto;
    ``free``: any WxH, multiples of 16, aspect <= 3:1, 655,360-8,294,400 px, edge <= 3840;
    ``native``: any WxH up to the output pixel cap, ``auto`` keeps the first image's size."""
    qualities: tuple[str, ...]
    """Accepted ``quality`` values besides ``auto``."""
    output_formats: tuple[str, ...]
    """Accepted ``output_format`` values (whether the engine can write them is checked later)."""
    max_prompt: int
    url: UrlRule
    """``response_format=url``: the default (dall-e-2), allowed (retouch's own names), or only
    with ``storage.allow_url_for_gpt_models`` (GPT families). ``b64_json`` is always accepted."""
    input_fidelity: bool
    """Takes ``input_fidelity`` (families without it always edit at high fidelity)."""
    markup: bool
    complexity: bool
    usage: UsageRule
    """``none``: no ``usage`` in responses; ``table``: the gpt-image-1 quality x size table;
    ``gpt-image-2``: the community gpt-image-2 formula."""
    gpt_options: bool = True
    """``output_format``, ``output_compression``, ``background``, ``stream``, ``partial_images``,
    ``moderation``."""


FAMILIES: dict[ApiFamily, Family] = {
    "dall-e-2": Family("dall-e-2", "dall-e-2", ("standard",), ("png",), 1000, "default",
                       input_fidelity=False, markup=False, complexity=False, usage="none",
                       gpt_options=False),
    "gpt-image": Family("gpt-image", "fixed", _LMH, _BASE, 32000, "setting",
                        input_fidelity=True, markup=False, complexity=False, usage="table"),
    "gpt-image-2": Family("gpt-image-2", "free", _LMH, _BASE, 32000, "setting",
                          input_fidelity=False, markup=False, complexity=False, usage="gpt-image-2"),
    "gpt-image-2.5": Family("gpt-image-2.5", "free", _LMHXM, _NEWEST, 32000, "setting",
                            input_fidelity=False, markup=True, complexity=False, usage="gpt-image-2"),
    "gpt-image-2.6": Family("gpt-image-2.6", "free", _LMHXM, _NEWEST, 32000, "setting",
                            input_fidelity=False, markup=True, complexity=True, usage="gpt-image-2"),
    "native": Family("native", "native", _LMHXM, _NEWEST, 32000, "allowed",
                     input_fidelity=True, markup=True, complexity=True, usage="table"),
}  # fmt: skip
"""Every family's rules. ``native`` is the family of retouch's own model names: every option
retouch implements."""

OPENAI_MODELS: dict[str, ApiFamily] = {
    "dall-e-2": "dall-e-2",
    "gpt-image-1": "gpt-image",
    "gpt-image-1-mini": "gpt-image",
    "gpt-image-1.5": "gpt-image",
    "chatgpt-image-latest": "gpt-image",
    "gpt-image-2": "gpt-image-2",
    "gpt-image-2-2026-04-21": "gpt-image-2",
    "gpt-image-2.5-sunburst": "gpt-image-2.5",
    "gpt-image-2.5-sunburst-2026-09-08": "gpt-image-2.5",
    "gpt-image-2.5-flare": "gpt-image-2.5",
    "gpt-image-2.5-flare-2026-09-08": "gpt-image-2.5",
    "gpt-image-2.6-sunburst": "gpt-image-2.6",
    "gpt-image-2.6-flare": "gpt-image-2.6",
}
"""OpenAI's image model names (listed in ``/v1/models``), each an alias of the default model
with its family's rules. ``chatgpt-image-latest`` follows gpt-image-1.5 (the SPEC lists them
together)."""

DEFAULT_REQUEST_MODEL = "gpt-image-1.5"
"""The rules of a request without ``model`` (the SPEC's Aug-2026 default)."""

_DATED = re.compile(r"^(?P<base>.+)-(?P<date>\d{4}-\d{2}-\d{2})$")


def openai_family(name: str) -> ApiFamily | None:
    """The family of an OpenAI model name, or ``None``. A snapshot ``NAME-YYYY-MM-DD`` of a
    GPT image model follows ``NAME``'s rules (dall-e-2 has no snapshots)."""
    family = OPENAI_MODELS.get(name)
    if family is not None:
        return family
    match = _DATED.match(name)
    if match is None:
        return None
    try:
        datetime.date.fromisoformat(match["date"])
    except ValueError:
        return None
    base = OPENAI_MODELS.get(match["base"])
    return None if base in (None, "dall-e-2") else base
