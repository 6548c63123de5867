"""Unit tests for imserver/dlp.py: refusing text that carries a classification mark.

Two lists drive most of the tests: texts that carry a mark (and must be
refused, with the right level) and texts that merely talk about secrecy or
contain a character of a mark (and must pass). A false refusal blocks ordinary
office work, so the second list matters as much as the first.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imserver.dlp import DEFAULT_PATTERNS, ClassifiedGuard, DlpMatch, normalise

GUARD = ClassifiedGuard()
# The same rules without the "no 密, no match" shortcut, so property tests
# exercise the regex itself.
RAW_GUARD = ClassifiedGuard(list(DEFAULT_PATTERNS))

# (text, expected level)
MUST_MATCH: list[tuple[str, str]] = [
    # From the brief.
    ("机密★1年", "机密"),
    ("秘密★6个月 关于…的通知", "秘密"),
    ("绝密", "绝密"),
    ("机密", "机密"),
    ("关于印发工作方案的通知\n机密\n各处室：", "机密"),
    ("【机密】关于…", "机密"),
    ("密级：机密", "机密"),
    ("密级:秘密★10年", "秘密"),
    ("此件为秘密级文件", "秘密"),
    ("机密级", "机密"),
    ("★绝密★", "绝密"),
    ("绝密★长期", "绝密"),
    ("★机密", "机密"),
    ("（秘密）", "秘密"),
    # GB/T 9704 layout: 份号, then 密级和保密期限, then 紧急程度.
    ("000123\n机密★5年\n特急\n关于…的请示", "机密"),
    ("秘密★", "秘密"),
    ("秘密★2030年12月31日", "秘密"),
    ("机密★十年", "机密"),
    ("秘密★六个月", "秘密"),
    ("机密 ★ 1 年", "机密"),
    ("这份文件是机密★1年的", "机密"),
    # Brackets and punctuation around a bare mark.
    ("〔机密〕", "机密"),
    ("[绝密]", "绝密"),
    ("〖秘密〗", "秘密"),
    ("绝密：关于…的报告", "绝密"),
    ("机密，请勿外传", "机密"),
    ("1.机密", "机密"),
    ("**机密**", "机密"),
    ("<p>机密</p>", "机密"),
    ("●绝密", "绝密"),
    ("\t绝密\t", "绝密"),
    ("机密 关于加强…的通知", "机密"),
    # Labels.
    ("密级 机密", "机密"),
    ("密级为秘密", "秘密"),
    ("密级|机密", "机密"),
    ("保密级别：绝密", "绝密"),
    ("保密等级：秘密", "秘密"),
    ("原密级：机密，已解密", "机密"),
    # X级.
    ("该文件属于机密级", "机密"),
    ("本件定为绝密级", "绝密"),
    ("这是机密级的", "机密"),
    ("按机密级管理", "机密"),
    ("【机密级】", "机密"),
    # File names.
    ("机密_关于XX的请示.docx", "机密"),
    ("XX报告(机密).pdf", "机密"),
    ("【秘密】2024年工作要点.txt", "秘密"),
    ("report-绝密.pdf", "绝密"),
    # Evasions.
    ("机\u200b密★1年", "机密"),
    ("秘\ufeff密", "秘密"),
    ("绝\u2060密★长期", "绝密"),
    ("机\u200c\u200d密", "机密"),
    ("机 密★1年", "机密"),
    ("秘  密", "秘密"),
    ("秘\u3000密", "秘密"),
    ("机密\u3000★\u30001年", "机密"),
    ("機密★1年", "机密"),
    ("祕密", "秘密"),
    ("絕密★長期", "绝密"),
    ("絶密", "绝密"),
    ("密級：機密", "机密"),
    ("機密級", "机密"),
    ("秘密★6個月", "秘密"),
    ("机密☆1年", "机密"),
    ("机密⭐1年", "机密"),
    ("机密＊1年", "机密"),
    ("机密★１年", "机密"),
    ("［机密］", "机密"),
    ("密级：机　密", "机密"),
]

MUST_NOT_MATCH: list[str] = [
    # From the brief.
    "秘书",
    "秘书长",
    "机要秘书处",  # no level at all: 机要 + 秘书
    "数据机密性保护",  # confidentiality as a property
    "机密性",
    "秘密性",
    "保密工作",
    "密码",
    "绝对",
    "秘密花园",
    "神秘",
    "机构",
    "密切",
    "秘鲁",
    "机密文件管理办法",  # a title about classified documents, not a mark
    "不涉密",
    "非涉密",
    # The level as part of a longer word.
    "国家秘密",
    "商业秘密",
    "工作秘密",
    "保守国家秘密",
    "告诉你一个秘密。",
    "秘密地",
    "秘密行动",
    "机密文件",
    "绝密档案",
    "保持机密",
    "《秘密》",
    # A level spelt by the end of one word and the start of the next.
    "手机密码",
    "随机密码",
    "计算机密集型任务",
    "飞机密集起降",
    "杜绝密码泄露",
    "拒绝密谋",
    "涉密计算机密级标识",
    "杜绝密级文件外传",
    # Talk about the levels: enumerations, ranges, mentions, rules, negations.
    "国家秘密的密级分为绝密、机密、秘密三级",
    "密级分为“绝密”“机密”“秘密”三级",
    "密级为绝密、机密、秘密三个等级",
    "绝密/机密/秘密",
    "绝密 / 机密 / 秘密",
    "机密 和 秘密",
    "处理秘密级及以上文件须使用涉密计算机",
    "严禁传输秘密级及以上信息",
    "秘密级（含）以上的文件不得在本系统传输",
    "密级：秘密及以上",
    "标注“机密”字样",
    '"机密"',
    "什么是“秘密”？",
    "机密？",
    "凡是秘密级文件一律不得上传",
    "如果是机密级的请走涉密网",
    "这不是秘密级文件",
    "该文件不属于机密级",
    "非机密",
    "非秘密级",
    "非机密★1年",
    "密级：非密",
    "密级：内部",
    "机密级文件管理办法",
    # ★ used as a bullet or separator.
    "★机密性保护",
    "保守秘密★人人有责",
    # Traditional script, still ordinary words.
    "機密性",
    "祕書",
]


@pytest.mark.parametrize(("text", "level"), MUST_MATCH)
def test_marks_are_found(text: str, level: str) -> None:
    found = GUARD.scan(text)
    assert found is not None, text
    assert found.mark == level
    norm = normalise(text)
    assert norm[found.start : found.end] == found.text
    assert level[0] in found.text


@pytest.mark.parametrize("text", MUST_NOT_MATCH)
def test_ordinary_words_pass(text: str) -> None:
    assert GUARD.scan(text) is None


def test_lists_are_big_enough() -> None:
    assert len(MUST_MATCH) >= 30
    assert len(MUST_NOT_MATCH) >= 30


@pytest.mark.parametrize("text", MUST_NOT_MATCH)
def test_ordinary_words_pass_inside_sentences(text: str) -> None:
    """Context on either side must not turn a word into a mark."""
    assert GUARD.scan(f"请注意：{text}，谢谢") is None
    assert GUARD.scan(f"各位同事\n{text}的要求如下") is None


@pytest.mark.parametrize("text", [t for t, _ in MUST_MATCH])
def test_marks_are_found_inside_longer_text(text: str) -> None:
    assert GUARD.scan(f"第一行\n{text}\n最后一行") is not None


# --------------------------------------------------------------------------- normalise


def test_normalise_folds_width_invisible_chars_traditional_and_stars() -> None:
    assert normalise("（秘密）") == "(秘密)"
    assert normalise("机\u200b\u200c\u200d\ufeff\u2060密") == "机密"
    assert normalise("機密 祕密 絕密 絶密 密級") == "机密 秘密 绝密 绝密 密级"
    assert normalise("☆✩⭐★") == "★★★★"
    assert normalise("１２年\u3000") == "12年 "
    assert normalise("普通文本 abc") == "普通文本 abc"


# --------------------------------------------------------------------------- scan_many / bytes


def test_scan_many_returns_first_match() -> None:
    assert GUARD.scan_many(["请假申请", "事由：家中有事"]) is None
    found = GUARD.scan_many(["请假申请", "密级：秘密", "绝密"])
    assert found is not None and found.mark == "秘密"
    assert GUARD.scan_many([]) is None


def test_scan_many_does_not_join_fields() -> None:
    # "机" ending one field and "密" starting the next is not a mark.
    assert GUARD.scan_many(["\n机", "密\n"]) is None


@pytest.mark.parametrize("encoding", ["utf-8", "gb18030", "gbk", "utf-8-sig", "utf-16"])
def test_scan_bytes_finds_mark_in_common_encodings(encoding: str) -> None:
    data = "机密★1年\n关于加强保密管理的通知\n".encode(encoding)
    found = GUARD.scan_bytes(data)
    assert found is not None and found.mark == "机密"


def test_scan_bytes_tolerates_damaged_files() -> None:
    data = "秘密★6个月\n正文".encode() + b"\xff\xfe\x80"
    found = GUARD.scan_bytes(data)
    assert found is not None and found.mark == "秘密"
    truncated = "绝密\n正文内容".encode("gb18030")[:-1]
    found = GUARD.scan_bytes(truncated)
    assert found is not None and found.mark == "绝密"


def test_scan_bytes_clean_text_passes() -> None:
    text = "数据机密性保护方案\n保密工作要点\n"
    for encoding in ("utf-8", "gb18030"):
        assert GUARD.scan_bytes(text.encode(encoding)) is None
    assert GUARD.scan_bytes(b"") is None


def test_scan_bytes_custom_encodings() -> None:
    data = "機密★1年".encode("big5")
    assert GUARD.scan_bytes(data, encodings=("big5",)) is not None


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_scan_bytes_never_raises(data: bytes) -> None:
    GUARD.scan_bytes(data)


# --------------------------------------------------------------------------- properties

_NO_MI = st.text(alphabet=st.characters(exclude_characters="密"))
# Text built from the characters the rules care about, minus 密: the likeliest
# way to trip a rule that is too loose.
_NEAR_MISS = st.text(
    alphabet=st.sampled_from(list("机秘绝级★☆*为是属于 \t\n【】()、和:：年个月长期1六"))
)


@settings(max_examples=300)
@given(st.one_of(_NO_MI, _NEAR_MISS))
def test_text_without_mi_never_matches(text: str) -> None:
    assert RAW_GUARD.scan(text) is None
    assert GUARD.scan(text) is None


@pytest.mark.parametrize(
    ("marking", "level"),
    [
        ("机密★1年", "机密"),
        ("秘密★6个月", "秘密"),
        ("绝密★长期", "绝密"),
        ("绝密", "绝密"),
        ("【机密】", "机密"),
        ("密级：秘密", "秘密"),
        ("★绝密★", "绝密"),
        ("机密级", "机密"),
        ("机\u200b密★1年", "机密"),
    ],
)
@settings(max_examples=100)
@given(text=_NO_MI, data=st.data())
def test_marking_on_its_own_line_always_matches(
    marking: str, level: str, text: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(text)), label="at")
    found = RAW_GUARD.scan(f"{text[:at]}\n{marking}\n{text[at:]}")
    assert found is not None
    # The surrounding text has no 密, so the match can only be the insertion.
    assert found.mark == level


@settings(max_examples=200)
@given(st.text())
def test_scan_never_raises(text: str) -> None:
    found = GUARD.scan(text)
    if found is not None:
        assert found.mark in {"绝密", "机密", "秘密"}


def test_large_inputs_complete() -> None:
    """1 MB of text, random and adversarial, must not hang (no timing assert)."""
    rng = random.Random(9704)
    cjk = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(350_000))
    assert len(cjk.encode()) >= 1_000_000
    RAW_GUARD.scan(cjk)
    GUARD.scan(cjk)
    # Many near-marks and no mark: every position starts a partial match.
    assert GUARD.scan("机密性" * 350_000) is None
    assert GUARD.scan("为秘 密 级、" * 150_000) is None
    assert GUARD.scan("密级为" * 300_000) is None
    noisy = "".join(rng.choice("机密秘绝级★ \t、和为是非不：【】\n1年") for _ in range(1_000_000))
    GUARD.scan(noisy)
    GUARD.scan_bytes(noisy.encode())


# --------------------------------------------------------------------------- configuration


def test_default_patterns_are_used_when_none() -> None:
    assert ClassifiedGuard(None).patterns == DEFAULT_PATTERNS
    assert GUARD.patterns == DEFAULT_PATTERNS


def test_custom_patterns_replace_defaults() -> None:
    guard = ClassifiedGuard([r"内部★"])
    assert guard.patterns == ("内部★",)
    assert guard.scan("机密★1年") is None
    found = guard.scan("内部★ 关于…")
    # No level in the snippet: the snippet itself is reported.
    assert found == DlpMatch(mark="内部★", text="内部★", start=0, end=3)


def test_custom_patterns_can_extend_defaults() -> None:
    guard = ClassifiedGuard([*DEFAULT_PATTERNS, r"(?<![^\s(])内部(?![^\s)])"])
    assert guard.scan("机密★1年") is not None
    assert guard.scan("（内部）") is not None  # custom patterns see normalised text
    assert guard.scan("内部资料") is None


def test_custom_pattern_match_reports_level() -> None:
    guard = ClassifiedGuard([r"绝密文件"])
    found = guard.scan("这是一份絕密文件")
    assert found is not None and found.mark == "绝密" and found.text == "绝密文件"


@pytest.mark.parametrize(
    "pattern",
    [
        "机密(",  # unbalanced
        "[秘密",  # unterminated class
        "*机密",  # nothing to repeat
        "(?i)机密",  # global flag, invalid once combined
        "(机)密\\1",  # numbered backreference
        "a*",  # matches the empty string: would refuse everything
    ],
)
def test_invalid_pattern_raises_value_error_naming_it(pattern: str) -> None:
    with pytest.raises(ValueError) as info:
        ClassifiedGuard(["机密", pattern])
    assert repr(pattern) in str(info.value)


def test_conflicting_group_names_raise_value_error() -> None:
    with pytest.raises(ValueError, match="combined"):
        ClassifiedGuard([r"(?P<x>机)密", r"(?P<x>秘)密"])


def test_empty_pattern_list_raises() -> None:
    with pytest.raises(ValueError):
        ClassifiedGuard([])


def test_a_single_string_is_not_a_pattern_list() -> None:
    with pytest.raises(TypeError):
        ClassifiedGuard("机密")


def test_match_is_immutable() -> None:
    found = GUARD.scan("机密")
    assert found is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.mark = "秘密"  # type: ignore[misc]
