"""Refuse classified material: detect national-secret classification marks (密级标志).

Why: the province's rules say 严禁在非涉密系统中传输涉密信息. This server is a
non-classified system, so a message, card field, file name or text file that
carries a classification mark must be refused before it is stored or fanned
out. The guard is deliberately about *marks*, not topics: a chat about the
confidentiality rules (保密工作, 数据机密性, 国家秘密的密级分为……) is ordinary
office work and must go through, while a pasted document headed ``机密★1年``
must not.

What is looked for
==================

The three levels of 《保守国家秘密法》 are 绝密, 机密 and 秘密 ("LEVEL" below).
Each default rule (:data:`DEFAULT_PATTERNS`) is written against the
*normalised* text (see :func:`normalise`) and mirrors how marks are actually
written, chiefly GB/T 9704《党政机关公文格式》, which puts 密级和保密期限 at the
top left of a document as ``机密★1年``:

R1 star term
    ``LEVEL ★ period`` anywhere in the text: ``机密★1年``, ``秘密★6个月``,
    ``绝密★长期``, ``机密★十年``, ``机密*1年``; or ``LEVEL ★`` followed by a
    token boundary (``绝密★``, ``★绝密★``). The star-plus-period shape has no
    everyday meaning, so no left-hand context is required ("这份文件是机密★1年的"
    is refused). Excluded: a negation right before the level (非/不/无).
    ``*`` counts as a star only when a period follows, because ``*`` alone is
    Markdown emphasis.
R2 label
    ``密级`` / ``保密级别`` / ``保密等级``, optionally followed by ``:`` ``=`` ``|``
    ``为`` or ``是``, then LEVEL: ``密级：机密``, ``密级:秘密★10年``, ``密级为秘密``.
    Not when the level opens an enumeration or range (``密级为绝密、机密、秘密三级``,
    ``密级：秘密及以上``) — that is a sentence about the levels, not a label.
R3 self-description
    A copula then ``LEVEL级``: ``此件为秘密级文件``, ``该文件属于机密级``,
    ``本件定为绝密级``. Copulas: 为 是 属 系 按 属于. Not after a negation or a
    conditional (不是 / 非为 / 凡是 / 若是 / 如果是 / 还是 …: "凡是秘密级文件一律不得
    上传" is a rule, not a mark) and not before an enumeration or range
    (``处理秘密级及以上文件``).
R4 standalone token
    LEVEL or ``LEVEL级`` standing alone as a token: preceded by the start of the
    text or a boundary character, and followed by the end or a boundary
    character. Boundaries are whitespace (so a line that is just ``机密``), ASCII
    punctuation, CJK brackets and full stops (``【机密】``, ``（秘密）`` which NFKC
    turns into ``(秘密)``, ``〔绝密〕``), ★ and bullets (``★机密``), dashes, ``_``
    (file names such as ``机密_关于….docx``). This is the rule that keeps
    ordinary words out: in 机密性, 秘密花园, 国家秘密, 手机密码, 杜绝密码, 机密文件管理办法
    the level touches another letter on at least one side, so it is a word part,
    not a mark. Not when it is one item of a spaced enumeration or the start of
    a range (``绝密 / 机密 / 秘密``, ``秘密级（含）以上的文件``), as for R2.

Deliberately *not* boundaries (each one is a judgement call, see the comments at
``_BOUNDARY``): quotation marks (“机密” is a *mention* of the word, as in
标注“机密”字样), 《》 (a title: 《秘密》 is a book), 、 and ``/`` (an enumeration
of levels: 绝密、机密、秘密), and ``?`` (a question about a level is not a mark).

Evasions handled: zero-width and other invisible characters inside a mark,
full-width forms (NFKC), star variants (☆ ✩ ⭐ … all become ★), up to three
spaces or tabs between the two characters of a level (``机 密★1年``, ``秘　密``,
the spaced-out form is also how some templates align two-character headings)
and the traditional / Japanese forms 機 祕 絕 絶 級. Determined evasion (机-密,
pictures of text, homophones) is out of scope: the guard stops accidental and
careless transmission, which is where leaks come from in practice.

Performance and safety: all rules are combined into one precompiled regex with
only bounded quantifiers and no nested repetition, so a scan is linear in the
input and cannot backtrack catastrophically; with the default rules a text
without 密 is rejected by a substring test before the regex runs.

Positions in :class:`DlpMatch` refer to the *normalised* text, which may differ
in length from the input (invisible characters removed, NFKC expansions); they
are meant for logs and diagnostics, not for slicing the original.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_PATTERNS", "ClassifiedGuard", "DlpMatch", "normalise"]

# --------------------------------------------------------------------------- normalise

# Invisible characters an attacker (or a word processor) can put between the
# characters of a mark. The brief's list (U+200B-U+200D, U+FEFF, U+2060) plus
# the other default-ignorable format characters with the same effect: soft
# hyphen, Arabic letter mark, Mongolian vowel separator, LRM/RLM, bidi
# embeddings and isolates, invisible operators, combining grapheme joiner,
# variation selectors and the Hangul fillers (which render as nothing).
_INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
)

# Traditional and Japanese forms of the characters the rules look for, and of
# the words in a period (長期, 6個月), so 機密★1年 / 密級：祕密 / 絕密★長期 are caught.
# 密 is the same character in all scripts.
_CHAR_MAP: dict[str, str] = {
    "機": "机",
    "祕": "秘",
    "絕": "绝",
    "絶": "绝",
    "級": "级",
    "長": "长",
    "個": "个",
    "兩": "两",
}

# Star lookalikes. NFKC leaves all of these alone, and a mark typed with a
# white star or an emoji star is still a mark.
_STARS = "☆✩✪✫✬✭✮✯✰⭐🌟✦✧⋆"


def _build_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for lo, hi in _INVISIBLE_RANGES:
        for cp in range(lo, hi + 1):
            table[cp] = None
    for src, dst in _CHAR_MAP.items():
        table[ord(src)] = dst
    for star in _STARS:
        table[ord(star)] = "★"
    return table


_TABLE = _build_table()


def normalise(text: str) -> str:
    """Fold the text to one canonical spelling before matching.

    NFKC turns full-width letters, digits, punctuation and the ideographic
    space into their ASCII forms (``（秘密）`` → ``(秘密)``, ``１年`` → ``1年``),
    so the rules need only one spelling of each. Invisible characters are then
    removed, traditional/Japanese forms mapped to simplified and star variants
    mapped to ★. The result may be shorter or longer than the input; nothing
    maps positions back, because callers only need to know *that* and *what*
    was found.
    """
    return unicodedata.normalize("NFKC", text).translate(_TABLE)


# --------------------------------------------------------------------------- rules

# Up to three spaces/tabs inside a level or around ★. Bounded on purpose: it
# keeps every rule linear and a level spread over a whole line is not a mark.
_GAP = "[ \\t]{0,3}"

_LEVEL = f"(?:绝{_GAP}密|机{_GAP}密|秘{_GAP}密)"

# Characters that end a token on either side of a level (R4) or after ★ (R1).
# Included:
#   \s                whitespace and line ends: the GB/T 9704 mark sits alone on
#                     the first line, and "机密 关于…" is the same mark run on.
#   ASCII punctuation what NFKC leaves of full-width ，：；！（）［］｛｝ etc., plus
#                     - _ . for file names (机密_关于….docx, 报告(机密).pdf)
#                     and < > for card HTML (<p>机密</p>).
#   CJK brackets      【】〔〕〖〗〈〉〘〙〚〛 - the usual way to set a mark apart.
#   。 — ― … · ・    sentence and list punctuation NFKC keeps.
#   ★ and bullets     "★机密", "●绝密"; note ★ before a level alone is not
#                     enough ("★机密性保护" is a bulleted list item).
# Excluded, each a judgement call:
#   " ' “ ” ‘ ’ 「」『』 a quoted level is a mention of the word (标注“机密”字样,
#                     什么是“秘密”), not a mark. Consequence: scan the *values*
#                     of JSON, not serialised JSON.
#   《》              a title: 《秘密》 is a book or film.
#   、 and /          enumerations of the levels: 绝密、机密、秘密 / 绝密/机密.
#   ?                 a question about a level ("机密？") is not a mark.
_BOUNDARY = "\\s!#$%&()*+,\\-.:;<=>@\\[\\\\\\]^_{|}~。【】〔〕〖〗〈〉〘〙〚〛—―…·・★●○■□◆◇▲△▼▽►▶◀•"
_LB = f"(?<![^{_BOUNDARY}])"  # start of text or a boundary character before
_RB = f"(?![^{_BOUNDARY}])"  # end of text or a boundary character after

# 保密期限 as GB/T 9704 and common practice write it: 1年, 6个月, 10 年, 六个月,
# 十年, 长期; 永久 for good measure; a bare number (机密★5) still reads as a mark.
_PERIOD = (
    f"(?:\\d{{1,4}}{_GAP}(?:个月|年|月|天|日|周)?"
    f"|[一二三四五六七八九十两]{{1,3}}{_GAP}(?:个月|年|月)"
    "|长期|永久)"
)

# A level followed by one of these is one item of a list or the start of a range
# ("秘密级及以上", "密级为绝密、机密、秘密三级"): talk about levels, not a label.
_NOT_ENUM = f"(?!{_GAP}级?{_GAP}(?:\\(含\\))?{_GAP}(?:、|和|或|与|及|以上|以下|至|到|/))"

# Words that make the following level a description of this document.
# (?<![…]X) rejects negations and conditionals in front of the copula:
# 不是 非为 未按 并非 凡是 若是 要是 或是 还是 是否 如果是 例如是.
_COPULA = "(?:(?<=属于)(?<!不属于)|(?<=[为是属系按])(?<![不非未并凡若要或还否果如][为是属系按]))"

# R1 star term. (?<![非不无]): "非机密★" is not a mark. ★ then a period, else
# ★ then a token boundary (so "保守秘密★人人有责", ★ as a separator between
# slogans, is not refused). * only with a period: "**机密**" is left to R4.
_R1 = f"(?<![非不无]){_LEVEL}{_GAP}(?:★(?:{_GAP}{_PERIOD}|{_RB})|\\*{_GAP}{_PERIOD})"
# R2 label. 密级 also occurs inside 保密级别, listed first so it wins.
_R2 = f"(?:保密级别|保密等级|密级){_GAP}(?:[:=|为是]{_GAP})?{_LEVEL}{_NOT_ENUM}"
# R3 self-description: 此件为秘密级文件.
_R3 = f"{_COPULA}{_LEVEL}{_GAP}级{_NOT_ENUM}"
# The mirror image of _NOT_ENUM for R4, whose left boundary may be a space:
# the last item of "绝密 / 机密 / 秘密" or "机密 和 秘密" is not a mark either.
# (Without the space, 、 / 和 … are not boundaries, so _LB already refuses.)
_NOT_ENUM_BEFORE = "".join(f"(?<![、/和或与及至到][ \\t]{{{n}}})" for n in (1, 2, 3))
# R4 standalone token: 机密 / 【机密】 / (秘密级) / ★绝密; not one item of an
# enumeration or the start of a range ("秘密级（含）以上的文件…").
_R4 = f"{_LB}{_NOT_ENUM_BEFORE}{_LEVEL}(?:{_GAP}级)?{_RB}{_NOT_ENUM}"

#: The default rule set, one regex string per rule (R1-R4 in the module
#: docstring), matched against :func:`normalise`d text. Pass your own sequence
#: to :class:`ClassifiedGuard` to replace it; ``(*DEFAULT_PATTERNS, extra)``
#: extends it.
DEFAULT_PATTERNS: tuple[str, ...] = (_R1, _R2, _R3, _R4)

# Finds the level inside a matched snippet ("密级:机密" → 机密). 保密 is not a
# level because 保 is not in the class.
_LEVEL_IN = re.compile(f"([绝机秘]){_GAP}密")


# --------------------------------------------------------------------------- guard


@dataclass(frozen=True, slots=True)
class DlpMatch:
    """What was found, for the refusal message and the audit log.

    ``mark`` is the level (绝密, 机密 or 秘密). A custom pattern may match text
    with no level in it; then ``mark`` is the matched text itself, so a
    message built from it still says what was refused. ``text``, ``start``
    and ``end`` refer to the normalised text (see :func:`normalise`).
    """

    mark: str
    text: str
    start: int
    end: int


class ClassifiedGuard:
    """Scans text for classification marks with one precompiled regex.

    Construct once (at start-up, from configuration) and share: the object is
    immutable and thread-safe, and a scan does no allocation beyond the
    normalised copy of the input.
    """

    __slots__ = ("_patterns", "_prefilter", "_regex")

    def __init__(self, patterns: Sequence[str] | None = None) -> None:
        """Compile ``patterns`` (``None``: :data:`DEFAULT_PATTERNS`).

        Raises :class:`ValueError` naming the offending pattern if one is not a
        valid regex, or matches the empty string (it would refuse every
        message), or if the list is empty (almost certainly a configuration
        mistake: to switch the check off, do not construct a guard).
        Patterns are joined into one alternation, so use ``(?:…)`` rather than
        numbered backreferences, and scoped flags ``(?i:…)`` rather than global
        ones; both mistakes are reported here rather than misbehaving later.
        """
        if isinstance(patterns, str):
            # A str is a Sequence[str]; iterating it would make each character
            # a pattern, silently.
            raise TypeError("patterns must be a sequence of regex strings, not a str")
        chosen = DEFAULT_PATTERNS if patterns is None else tuple(patterns)
        if not chosen:
            raise ValueError("no DLP patterns given; pass None for the defaults")
        for pattern in chosen:
            if not isinstance(pattern, str):
                raise ValueError(f"DLP pattern {pattern!r}: not a string")
            try:
                compiled = re.compile(f"(?:{pattern})")
            except re.error as exc:
                raise ValueError(f"invalid DLP pattern {pattern!r}: {exc}") from exc
            if compiled.search("") is not None:
                raise ValueError(f"DLP pattern {pattern!r} matches the empty string")
            if compiled.groups and re.search(r"\\[1-9]", pattern):
                raise ValueError(
                    f"DLP pattern {pattern!r}: numbered backreferences break when "
                    "patterns are combined; use (?P<name>…) and (?P=name)"
                )
        try:
            self._regex = re.compile("|".join(f"(?:{p})" for p in chosen))
        except re.error as exc:  # e.g. the same group name in two patterns
            raise ValueError(f"DLP patterns cannot be combined: {exc}") from exc
        self._patterns = chosen
        # Every default rule contains 密 literally, so a text without it cannot
        # match: a substring test (C speed) skips the regex for almost all chat.
        # Custom patterns get no such shortcut, since nothing is known about them.
        self._prefilter = "密" if patterns is None else None

    @property
    def patterns(self) -> tuple[str, ...]:
        """The regex strings in force, for start-up logging."""
        return self._patterns

    def scan(self, text: str) -> DlpMatch | None:
        """Return the first classification mark in ``text``, or ``None``."""
        norm = normalise(text)
        if self._prefilter is not None and self._prefilter not in norm:
            return None
        m = self._regex.search(norm)
        if m is None:
            return None
        snippet = m.group(0)
        level = _LEVEL_IN.search(snippet)
        mark = level.group(1) + "密" if level is not None else snippet
        return DlpMatch(mark=mark, text=snippet, start=m.start(), end=m.end())

    def scan_many(self, texts: Iterable[str]) -> DlpMatch | None:
        """First mark in any of ``texts`` (e.g. every string field of a card).

        Each text is scanned on its own: a mark split across two fields is not
        a mark anyone would read, and joining them could invent one.
        """
        for text in texts:
            found = self.scan(text)
            if found is not None:
                return found
        return None

    def scan_bytes(
        self, data: bytes, encodings: Sequence[str] = ("utf-8", "gb18030")
    ) -> DlpMatch | None:
        """Scan the content of a text file whose encoding is not declared.

        Office text files here are UTF-8 or GB18030/GBK. If the data decodes
        cleanly with one of ``encodings`` (tried in order), only that reading
        is scanned: decoding UTF-8 as GB18030 yields arbitrary CJK characters
        that could spell a mark by accident. If none decodes cleanly (a
        truncated or mixed file), every tolerant decoding (``errors="ignore"``)
        is scanned, so damage to the file does not hide a mark. A UTF-16 byte
        order mark (Windows "Unicode" text) puts UTF-16 first.
        """
        order = list(encodings)
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            order.insert(0, "utf-16")
        for encoding in order:
            try:
                decoded = data.decode(encoding)
            except UnicodeDecodeError:
                continue
            return self.scan(decoded)
        for encoding in order:
            found = self.scan(data.decode(encoding, errors="ignore"))
            if found is not None:
                return found
        return None
