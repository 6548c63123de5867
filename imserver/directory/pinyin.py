"""Search keys for a person's name: full pinyin and pinyin initials. Pure.

Computed once when a sync stores a name (not per query) and kept in indexed
columns, so ``zs`` or ``zhangs`` finds 张三 with an index range scan.

Each Chinese character gets its most common reading from ``pypinyin``,
cached per character: a 100,000-person first sync must not spend minutes
(and the store's writer thread) segmenting names into phrases, and phrase
readings are tuned for words, not names. So heteronyms get their common
reading (曾 as céng, 单 as dān). A run of Latin letters or digits
("Alice", "12") is one word.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pypinyin import lazy_pinyin

#: Longest query the search accepts.
MAX_QUERY = 64


@dataclass(slots=True, frozen=True)
class NameKeys:
    """``initials``: ``zs`` for 张三; ``full``: ``zhangsan``. Lowercase ASCII letters/digits."""

    initials: str
    full: str


@lru_cache(maxsize=65536)
def _reading(ch: str) -> str:
    """The toneless pinyin of one character; "" if it has none (punctuation, kana…)."""
    readings = lazy_pinyin(ch, errors="ignore")
    reading = readings[0] if readings else ""
    return "".join(c for c in reading.lower() if c.isascii() and c.isalnum())


def _words(name: str) -> list[str]:
    words: list[str] = []
    latin = ""
    for ch in name:
        if ch.isascii():
            if ch.isalnum():
                latin += ch.lower()
                continue
            reading = ""
        else:
            reading = _reading(ch)
        if latin:
            words.append(latin)
            latin = ""
        if reading:
            words.append(reading)
    if latin:
        words.append(latin)
    return words


def name_keys(name: str) -> NameKeys:
    """The search keys of ``name``."""
    words = _words(name)
    return NameKeys(initials="".join(w[0] for w in words), full="".join(words))


def query_key(query: str) -> str | None:
    """The query as a pinyin key (lowercase letters/digits), or None if it is not one.

    Only a query written in Latin letters (with optional spaces: ``zhang san``)
    can match pinyin; a query with Chinese characters matches the name itself.
    """
    stripped = query.replace(" ", "")
    if not stripped or not stripped.isascii() or not stripped.isalnum():
        return None
    return stripped.lower()
