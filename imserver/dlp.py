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

Evasions handled: every character that renders as nothing inside a mark
(Default_Ignorable_Code_Point — zero-width characters, variation selectors
U+FE00-FE0F and U+E0100-E01EF, Mongolian FVS, Khmer inherent vowels, musical
formatting, tags U+E0000-E007F, combining grapheme joiner — every format
character (Cf) and non-whitespace controls such as NUL), full-width forms
(NFKC), star lookalikes (☆ ✶ ✱ ⛤ ✦ ⋆ ⭐ … all become ★), markup in markdown
fields (``机**密**``, ``机&#23494;``, ``机<b></b>密``: see
:func:`markdown_visible_text`, used only for fields clients render), up to three
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
import html
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PATTERNS",
    "TEXT_ENCODINGS",
    "ClassifiedGuard",
    "DlpMatch",
    "markdown_visible_text",
    "normalise",
    "sniff_text_encoding",
]

# --------------------------------------------------------------------------- normalise

# Every code point with the Unicode property Default_Ignorable_Code_Point, from
# DerivedCoreProperties.txt (Unicode 15.1; the list has been stable since 14.0
# added U+180F). Python's unicodedata does not expose the property, and the
# table is small enough not to need a dependency. A default-ignorable code
# point renders as nothing when a font lacks it, which is exactly what makes
# it useful for hiding a mark: 机\U000E0020密★1年 looks like 机密★1年.
# Reserved (unassigned) ranges are listed too, as the property does, so a
# future assignment cannot open a gap.
_DEFAULT_IGNORABLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG / JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ / AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE .. RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # WORD JOINER, invisible operators, isolates, deprecated format
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE (BOM)
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT CONTROLS
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM .. END PHRASE
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17..256, reserved
)

# General category Cf (format) is read from unicodedata, so it follows the
# Unicode version of the running Python. Format characters exist only in
# planes 0, 1 and 14 (planes 2-13 hold ideographs or nothing), so only those
# are walked: about 135k look-ups once at import instead of 1.1M.
_FORMAT_SEARCH_RANGES: tuple[range, ...] = (range(0x0000, 0x20000), range(0xE0000, 0xE1000))

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

# Star lookalikes, all folded to ★. NFKC leaves every one of these alone, and
# a mark typed with a white star, a dingbat star, a pentagram, an asterisk
# operator or an emoji star is still a mark. Deliberately *not* here: the ASCII
# ``*`` (and ＊, which NFKC turns into it) — it is Markdown emphasis, so R1
# counts it as a star only when a period follows (``机密*1年``), while
# ``这是**机密**文件`` stays an ordinary sentence.
_STARS = (
    "☆✩✪✫✬✭✮✯✰⭐⭑⭒🌟🌠✦✧⋆"  # stars
    "✡✱✲✳✴✵✶✷✸✹✺✻✼✽❂❃❇❈❉❊❋✢✣✤✥"  # dingbat stars, asterisks and sparkles
    "⛤⛥⛦⛧🔯⍟⯪⯫⯨⯩"  # pentagrams, hexagram, APL circle star, half stars
    "∗⁎⁑٭⊛꙳"  # asterisk operators, low/two asterisks, Arabic star, Slavonic asterisk
    "🟀🟁🟂🟃🟄🟅🟆🟇🟈🟉🟊🟋🟌🟍🟎🟏🟐🟑🟒🟓🟔"  # geometric shapes extended stars
)


def _is_hidden(cp: int) -> bool:
    """True for a control character that is not whitespace (NUL, BEL, DEL, C1)."""
    ch = chr(cp)
    return unicodedata.category(ch) == "Cc" and not ch.isspace()


def _build_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for lo, hi in _DEFAULT_IGNORABLE_RANGES:
        for cp in range(lo, hi + 1):
            table[cp] = None
    for search in _FORMAT_SEARCH_RANGES:
        for cp in search:
            if unicodedata.category(chr(cp)) == "Cf" or _is_hidden(cp):
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
    so the rules need only one spelling of each. Then every code point that
    renders as nothing is removed — Default_Ignorable_Code_Point (zero-width
    characters, variation selectors, Mongolian FVS, Khmer inherent vowels,
    tags, musical formatting, …), every format character (category Cf) and
    every control character that is not whitespace (NUL, which a text file
    may carry) — traditional/Japanese forms are mapped to simplified and star
    lookalikes to ★. Removal runs after NFKC so that what NFKC produces
    (U+3164 → U+1160) is removed too. The result may be shorter or longer
    than the input; nothing maps positions back, because callers only need to
    know *that* and *what* was found. The stored text is never changed: this
    copy exists only to be matched.
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


# --------------------------------------------------------------------------- markdown

# How many rounds of "strip tags, decode entities" a markdown field gets. One
# round is what a renderer does; a few more undo double encoding
# (``&amp;#23494;``) for renderers that decode twice. Bounded, so a field of
# nested ``&amp;amp;…`` costs a fixed number of linear passes.
_MARKUP_ROUNDS = 4

# HTML comments and tags. ``[^<>]`` keeps each match linear and a bare ``<``
# (``a < b``) is left alone. Block-level tags end a line when rendered
# (``机密<br>性质`` shows 机密 on a line of its own), so they become a newline;
# inline tags (``机<b></b>密``) render as nothing between their neighbours.
_HTML_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9]{0,15})(?:\s[^<>]{0,2000})?/?>")
_BLOCK_TAGS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "br", "dd", "details", "div"),
        *("dl", "dt", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5"),
        *("h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section"),
        *("summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul"),
    }
)

# Markdown inline syntax a reader does not see: links and images keep their
# text (``[机](x)密`` reads 机密), backslash escapes keep the escaped
# character, and emphasis / strike / code markers (* _ ~ `) disappear
# (``机**密**★1年`` reads 机密★1年). The raw field is scanned as well (see
# :meth:`ClassifiedGuard.scan_markdown`), so dropping ``*`` or ``_`` can only
# add matches, never hide the raw ones (``机密*1年``, ``机密_关于…``).
_MD_LINK = re.compile(r"!?\[([^\[\]\n]{0,1000})\](?:\([^()\n]{0,2000}\)|\[[^\[\]\n]{0,200}\])")
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_MD_MARKERS = re.compile(r"[*_~`]+")


def _strip_comments(text: str) -> str:
    """Drop ``<!-- … -->`` (an unterminated one runs to the end, as in HTML).

    A find loop rather than a lazy regex: linear however many ``<!--`` there are.
    """
    parts: list[str] = []
    pos = 0
    while (start := text.find("<!--", pos)) != -1:
        parts.append(text[pos:start])
        end = text.find("-->", start + 4)
        pos = len(text) if end == -1 else end + 3
    parts.append(text[pos:])
    return "".join(parts)


def _strip_tags(text: str) -> str:
    def replace(m: re.Match[str]) -> str:
        return "\n" if m.group(1).lower() in _BLOCK_TAGS else ""

    return _HTML_TAG.sub(replace, _strip_comments(text))


def markdown_visible_text(markdown: str) -> str:
    """What a reader sees of a markdown/HTML field, for matching only.

    Why: a card's ``body_md`` or a notice's text is rendered by the client, so
    ``机**密**★1年``, ``机&#23494;★1年`` and ``机<b></b>密★1年`` all *show* as
    机密★1年 while their source contains no mark. This undoes the markup:
    tags are stripped and entities decoded (repeated, bounded by
    ``_MARKUP_ROUNDS``, until nothing changes), then links reduced to their
    text, escapes resolved and emphasis/code markers removed. Over-reading
    (``&lt;b&gt;`` decoded and then stripped like a tag) can only refuse a
    contrived text, never let a mark through.

    Plain-text fields (chat messages, names) are *not* passed through this:
    clients show them literally, so ``&#23494;`` there reads as eight ASCII
    characters and hides nothing.
    """
    text = markdown
    for _ in range(_MARKUP_ROUNDS):
        decoded = html.unescape(_strip_tags(text))
        if decoded == text:
            break
        text = decoded
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_ESCAPE.sub(r"\1", text)
    return _MD_MARKERS.sub("", text)


# --------------------------------------------------------------------------- text files

# Byte order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

# Control bytes that text does not contain: everything below 0x20 except
# tab, line feed, vertical tab, form feed, carriage return, 0x1A (the DOS end
# of file) and ESC (colour codes in logs), and DEL. NUL is one of them.
_BINARY_CONTROLS = bytes([*range(0x00, 0x09), *range(0x0E, 0x1A), *range(0x1C, 0x20), 0x7F])
_TEXT_BYTES = bytes(b for b in range(256) if b not in _BINARY_CONTROLS)

# surrogateescape turns each byte that does not decode into one of these.
_UNDECODABLE = re.compile("[\udc80-\udcff]")

#: Encodings tried, in order, for a sample without a byte order mark. Office
#: text here is UTF-8 or GB18030/GBK (GB18030 is a superset of GBK and GB2312).
TEXT_ENCODINGS: tuple[str, ...] = ("utf-8", "gb18030")


def _allowed_damage(sample: bytes) -> int:
    """How many bad bytes a sample may have and still be text: 1 + 0.5 %.

    Why a tolerance at all: a text file with one NUL or one stray 0xFF (a bad
    copy, a truncated paste, a deliberate "make it binary" byte) is still
    read by a person as text. A PNG, ZIP or PDF has dozens of bad bytes in
    its first kilobytes, far over the bound.
    """
    return 1 + len(sample) // 200


def _damage(sample: bytes, encoding: str) -> int:
    """Bytes of ``sample`` that do not decode or are binary control bytes.

    The incremental decoder leaves a character cut at the end of the sample
    undecoded instead of counting it, since the sample is usually a prefix.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
    decoded = decoder.decode(sample, final=False)
    controls = len(sample.translate(None, _TEXT_BYTES))  # what is left once text is deleted
    return len(_UNDECODABLE.findall(decoded)) + controls


def sniff_text_encoding(sample: bytes, encodings: Sequence[str] = TEXT_ENCODINGS) -> str | None:
    """The encoding ``sample`` (the start of a file) reads as text in, or ``None``.

    Why by content: the Content-Type of an upload is whatever the client
    chose, so ``application/octet-stream`` must not be a way round the scan.
    A byte order mark decides on its own (Windows Notepad "Unicode" is UTF-16
    with one, full of NUL bytes). Otherwise the first of ``encodings`` in
    which at most :func:`_allowed_damage` bytes are undecodable or binary
    control bytes wins. ``None`` means binary: not scanned as text, so the
    cost for a real PNG/ZIP/PDF is the look at this sample.
    """
    if not sample:
        return None
    for bom, encoding in _BOMS:
        if sample.startswith(bom):
            return encoding
    allowed = _allowed_damage(sample)
    for encoding in encodings:
        if _damage(sample, encoding) <= allowed:
            return encoding
    return None


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

    def scan_markdown(self, markdown: str) -> DlpMatch | None:
        """First mark in a markdown/HTML field, as written or as rendered.

        Both readings are scanned: the rendered one (:func:`markdown_visible_text`)
        catches marks spelt with markup or entities, the raw one keeps what the
        markup stripping removes (an attribute, ``机密_关于…``) from hiding a mark.
        """
        return self.scan(markdown) or self.scan(markdown_visible_text(markdown))

    def scan_bytes(self, data: bytes, encodings: Sequence[str] = TEXT_ENCODINGS) -> DlpMatch | None:
        """Scan the content of a text file whose encoding is not declared.

        A byte order mark (UTF-8, UTF-16 or UTF-32, LE or BE) names the
        encoding and only that reading is scanned. Otherwise office text files
        here are UTF-8 or GB18030/GBK: if the data decodes cleanly with one of
        ``encodings`` (tried in order), only that reading is scanned: decoding
        UTF-8 as GB18030 yields arbitrary CJK characters that could spell a
        mark by accident. If none decodes cleanly (a truncated or mixed file,
        a stray 0xFF), every tolerant decoding (``errors="ignore"``) is
        scanned, so damage to the file does not hide a mark. NUL and other
        control bytes decode and are then removed by :func:`normalise`.
        """
        for bom, encoding in _BOMS:
            if data.startswith(bom):
                return self.scan(data.decode(encoding, errors="ignore"))
        for encoding in encodings:
            try:
                decoded = data.decode(encoding)
            except UnicodeDecodeError:
                continue
            return self.scan(decoded)
        for encoding in encodings:
            found = self.scan(data.decode(encoding, errors="ignore"))
            if found is not None:
                return found
        return None
