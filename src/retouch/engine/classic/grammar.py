"""The prompt parser: phrases in, a list of operations out, or a refusal naming what it did
not understand.

How it reads a prompt:

1. Quoted text (``'…'``, ``"…"``, ``“…”``, ``‘…’``, ``「…」``, ``『…』``) is set aside and replaced
   by a placeholder, so the words inside it are never read as instructions.
2. Every phrase rule (``phrases.RULES``) is matched against the lower-cased prompt. Matches are
   taken from left to right; where two overlap, the one starting first wins, and among those
   starting at the same place the higher priority, then the longer one.
3. Modifiers ("slightly", "at the top", "in red", "稍微") in the remaining text attach to the
   nearest operation that takes them.
4. What is left must be filler ("please make it", "请把图片…一下"). Any other word means the
   prompt asks for something this grammar does not know, and the whole prompt is refused:
   carrying out half of it would be a silent failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from retouch.engine.classic.operations import Op
from retouch.engine.classic.phrases import FILLER_WORDS, FILLER_ZH, MODIFIERS, RULES

_QUOTES = re.compile(
    r"“(?P<a>[^”]*)”|‘(?P<b>[^’]*)’|「(?P<c>[^」]*)」|『(?P<d>[^』]*)』|\"(?P<e>[^\"]*)\""
    # an apostrophe inside an English word ("it's") does not open a quote
    r"|(?<![A-Za-z0-9])'(?P<f>[^']*)'(?![A-Za-z0-9])"
)
_EN_WORD = re.compile(r"[a-z0-9][a-z0-9'&/-]*")
_FILLER = frozenset(FILLER_WORDS)
_SEPARATORS = re.compile(r"[\s,.;:!?()\[\]{}<>*+=_~`|\\/，。；：！？、（）【】《》…—·-]+")


class NotUnderstood(ValueError):
    """The prompt holds words the grammar cannot map to an operation."""

    def __init__(self, fragment: str) -> None:
        super().__init__(fragment)
        self.fragment = fragment


@dataclass(frozen=True)
class _Span:
    start: int
    end: int

    def overlaps(self, other: _Span) -> bool:
        return self.start < other.end and other.start < self.end

    def distance(self, other: _Span) -> int:
        return max(0, other.start - self.end, self.start - other.end)


def parse(prompt: str) -> list[Op]:
    """The operations a prompt asks for, in prompt order. Raises ``NotUnderstood``."""
    text, quotes = _set_quotes_aside(prompt)
    text = " ".join(text.lower().split())
    taken: list[tuple[_Span, Op]] = _match_rules(text)
    if not taken:
        raise NotUnderstood(_shorten(prompt))
    used = [span for span, _ in taken]
    ops = [op for _, op in taken]
    for span in _attach_modifiers(text, used, taken, ops):
        used.append(span)
    _check_leftover(text, used)
    return [_resolve_quote(op, quotes) for op in ops]


def _set_quotes_aside(prompt: str) -> tuple[str, list[str]]:
    quotes: list[str] = []

    def hold(match: re.Match[str]) -> str:
        quotes.append(next(g for g in match.groups() if g is not None))
        return f" ⟦{len(quotes) - 1}⟧ "

    return _QUOTES.sub(hold, prompt), quotes


def _match_rules(text: str) -> list[tuple[_Span, Op]]:
    candidates: list[tuple[int, int, int, int, Op]] = []
    for order, rule in enumerate(RULES):
        for match in rule.pattern.finditer(text):
            if match.end() > match.start() and text[match.start() : match.end()].strip():
                op = rule.build(match)
                candidates.append((match.start(), -rule.priority, -match.end(), order, op))
    candidates.sort(key=lambda c: c[:4])
    taken: list[tuple[_Span, Op]] = []
    for start, _priority, neg_end, _order, op in candidates:
        span = _Span(start, -neg_end)
        if not any(span.overlaps(other) for other, _ in taken):
            taken.append((span, op))
    taken.sort(key=lambda t: t[0].start)
    return taken


def _attach_modifiers(
    text: str, used: list[_Span], taken: list[tuple[_Span, Op]], ops: list[Op]
) -> list[_Span]:
    """Apply each modifier to the nearest op that takes it; return the spans consumed."""
    consumed: list[_Span] = []
    for modifier in MODIFIERS:
        for match in modifier.pattern.finditer(text):
            span = _Span(match.start(), match.end())
            if span.start == span.end or any(span.overlaps(o) for o in (*used, *consumed)):
                continue
            order = sorted(
                range(len(taken)),
                key=lambda i: (taken[i][0].distance(span), taken[i][0].start < span.start),
            )
            for i in order:
                adjusted = modifier.apply(ops[i], match)
                if adjusted is not None:
                    ops[i] = adjusted
                    consumed.append(span)
                    break
    return consumed


def _check_leftover(text: str, used: list[_Span]) -> None:
    keep = [True] * len(text)
    for span in used:
        keep[span.start : span.end] = [False] * (span.end - span.start)
    leftover = "".join(c if k else " " for c, k in zip(text, keep, strict=True))
    unknown: list[str] = []
    for chunk in _SEPARATORS.split(leftover):
        if not chunk:
            continue
        if "⟦" in chunk:
            unknown.append("a quoted text that is not part of 'add the text …'")
            continue
        for piece in re.split(r"([a-z0-9][a-z0-9'&/-]*)", chunk):
            if not piece:
                continue
            if _EN_WORD.fullmatch(piece):
                if piece not in _FILLER:
                    unknown.append(piece)
            else:
                rest = _strip_chinese_filler(piece)
                if rest:
                    unknown.append(rest)
    if unknown:
        raise NotUnderstood(_shorten(" ".join(dict.fromkeys(unknown))))


def _strip_chinese_filler(piece: str) -> str:
    for word in FILLER_ZH:
        piece = piece.replace(word, " ")
    return " ".join(piece.split())


def _resolve_quote(op: Op, quotes: list[str]) -> Op:
    if op.name != "text":
        return op
    return replace(op, text=quotes[int(op.text)].strip())


def _shorten(fragment: str, limit: int = 80) -> str:
    fragment = " ".join(fragment.split())
    return fragment if len(fragment) <= limit else fragment[: limit - 1] + "…"
