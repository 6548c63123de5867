"""Zero false positives on ordinary government text: a corpus of a few thousand sentences.

Why: the classified-mark guard refuses a message outright, so a false hit
stops ordinary office work — a meeting notice about 保密工作, a 12345 hotline
case about someone dumping waste 秘密地, a request to the 秘书处. The
normaliser added for issue #12 (NFKC, invisible characters, star lookalikes,
markdown) widens what the rules see; this corpus shows it did not widen what
they refuse.

The sentences come from templates written here (zh-CN office language:
meetings, notices, hotline cases, approvals, security practice) filled in
from small word lists, among them every common word that contains 密 or 秘 in
innocent use (密切, 紧密, 秘书长, 机密性, 国家秘密, 商业秘密, 手机密码 …).

Deliberately *not* in the corpus: sentences where a level stands alone as a
token — "机密，请勿外传", a line that is just "秘密" — because the rules
refuse those on purpose (R4 in ``imserver/dlp.py``: a bare level set apart
by punctuation is how a mark is written). Sentences that merely *talk* about
the levels (国家秘密的密级分为绝密、机密、秘密三级, 处理秘密级及以上文件 …) are in.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from imserver.dlp import ClassifiedGuard, DlpMatch

GUARD = ClassifiedGuard()

UNITS = [
    "各乡镇人民政府",
    "县直各部门",
    "市政府办公室",
    "区应急管理局",
    "街道办事处",
    "各村（社区）",
    "县保密局",
    "机要秘书处",
    "市委办公室秘书科",
    "市数据局",
    "县信访局",
    "市场监管局",
]

MEETINGS = [
    "保密工作会议",
    "保密委员会全体会议",
    "防汛工作部署会",
    "安全生产例会",
    "秘书长办公会",
    "机要保密工作培训会",
    "数据安全和机密性保护研讨会",
    "密码应用安全性评估推进会",
    "涉密人员保密教育培训",
    "商业秘密保护工作座谈会",
    "“保密法宣传周”启动仪式",
    "网络安全和信息化工作会议",
]

PLACES = ["三楼会议室", "县政府二号会议室", "视频会议系统", "市民中心报告厅", "局机关五楼"]
DATES = ["11月28日上午9:00", "下周一下午3点", "12月2日（周二）14:30", "本周五上午", "明天上午十点"]
ATTENDEES = ["分管负责同志", "办公室主任", "保密员", "各科室负责人", "秘书", "联络员"]

TOPICS = [
    "汛情变化",
    "天气预报",
    "舆情动态",
    "群众诉求",
    "项目进度",
    "疫情防控形势",
    "节日期间安全生产",
    "网络安全态势",
]

# Words with 密 or 秘 used innocently, each with a phrase around it.
INNOCENT_PHRASES = [
    "密切配合、形成合力",
    "紧密衔接各环节",
    "周密部署、严密防范",
    "精密仪器的运输",
    "人口密集场所的消防检查",
    "加强保密管理",
    "防止失泄密事件发生",
    "加密传输业务数据",
    "按期解密到期文件",
    "定期修改手机密码和邮箱密码",
    "妥善保管数字证书密钥",
    "严禁在非涉密计算机上处理涉密信息",
    "涉密载体实行专人管理",
    "保障数据的机密性、完整性和可用性",
    "落实国家秘密载体管理规定",
    "保护企业商业秘密",
    "遵守工作秘密管理规定",
    "请秘书长审阅",
    "报秘书处备案",
    "揭开神秘面纱",
    "探索科学奥秘",
    "秘鲁代表团来访",
    "使用随机密码生成工具",
    "计算机密集型任务的排期",
    "杜绝密码泄露",
    "机密文件管理办法的修订",
    "国家秘密的密级分为绝密、机密、秘密三级",
    "处理秘密级及以上文件须使用涉密计算机",
    "严禁传输秘密级及以上信息",
    "秘密级（含）以上的文件不得在本系统传输",
    "凡是秘密级文件一律不得上传",
    "标注“机密”字样的文件须走涉密网",
    "亲密无间的同事关系",
    "人员稠密地区的排查",
]

HOTLINE_ISSUES = [
    "有人秘密地在河道倾倒建筑垃圾",
    "小区夜间施工噪音扰民",
    "路灯损坏长期无人维修",
    "有商户秘密地收集顾客个人信息",
    "农民工工资拖欠",
    "学校周边交通拥堵",
    "餐馆油烟直排",
    "手机密码被骗子套取后银行卡被盗刷",
]

LEAVE_KINDS = ["年休假", "事假", "病假", "婚假", "出差", "调休"]
PEOPLE = ["张伟", "王芳", "李秘书", "刘建国", "陈静", "赵秘书长"]
DAYS = ["1", "2", "3", "5", "十"]

TEMPLATES_MEETING = [
    "{unit}定于{date}在{place}召开{meeting}，请{who}准时参加。",
    "关于召开{meeting}的通知：时间{date}，地点{place}，参会人员为{who}。",
    "请{unit}于{date}前报送{meeting}参会名单，联系人：{who}。",
    "【会议提醒】{meeting}将于{date}召开，请{who}提前十分钟到场。",
]
TEMPLATES_PRACTICE = [
    "请{unit}{phrase}，确保各项工作落到实处。",
    "{unit}要{phrase}，并将落实情况于{date}前报送。",
    "通知：{phrase}，请{who}认真组织学习。",
    "各位同事：近期请注意{phrase}。谢谢！",
]
TEMPLATES_WATCH = [
    "请{unit}密切关注{topic}，发现问题及时报告。",
    "{unit}要密切跟踪{topic}，做好应对准备。",
]
TEMPLATES_HOTLINE = [
    "12345热线工单：市民反映{issue}，请{unit}于{days}个工作日内办结并回复。",
    "工单转办：群众来电称{issue}，请{unit}核查处理。",
]
TEMPLATES_APPROVAL = [
    "{person}的{leave}申请（{days}天）已审批通过，请秘书处备案。",
    "{person}提交的{leave}申请待{who}审批，请于{date}前处理。",
]


def _fill(templates: list[str], **choices: list[str]) -> list[str]:
    keys = list(choices)
    out: list[str] = []
    for template in templates:
        used = [k for k in keys if "{" + k + "}" in template]
        for combo in itertools.product(*(choices[k] for k in used)):
            out.append(template.format(**dict(zip(used, combo, strict=True))))
    return out


def build_corpus() -> list[str]:
    """Every sentence the templates produce, deduplicated, in a stable order."""
    rng = random.Random(9704)
    sentences = _fill(
        TEMPLATES_MEETING,
        unit=rng.sample(UNITS, 6),
        date=DATES,
        place=PLACES[:3],
        meeting=MEETINGS,
        who=rng.sample(ATTENDEES, 3),
    )
    sentences += _fill(
        TEMPLATES_PRACTICE,
        unit=UNITS,
        phrase=INNOCENT_PHRASES,
        date=DATES[:2],
        who=ATTENDEES[:3],
    )
    sentences += _fill(TEMPLATES_WATCH, unit=UNITS, topic=TOPICS)
    sentences += _fill(TEMPLATES_HOTLINE, issue=HOTLINE_ISSUES, unit=UNITS, days=DAYS)
    sentences += _fill(
        TEMPLATES_APPROVAL,
        person=PEOPLE,
        leave=LEAVE_KINDS,
        days=DAYS,
        who=ATTENDEES[:2],
        date=DATES[:2],
    )
    return list(dict.fromkeys(sentences))


CORPUS = build_corpus()


def test_corpus_is_a_few_thousand_sentences_using_the_risky_characters() -> None:
    assert len(CORPUS) >= 3000
    assert sum("密" in s for s in CORPUS) >= 1500
    assert sum("秘" in s for s in CORPUS) >= 500


def _offenders(scan: Callable[[str], DlpMatch | None], texts: list[str]) -> list[str]:
    """The texts ``scan`` refuses: listed in full, so a failure names them."""
    return [t for t in texts if scan(t) is not None]


def test_no_sentence_is_refused_as_plain_text() -> None:
    assert _offenders(GUARD.scan, CORPUS) == []


def test_no_sentence_is_refused_as_markdown() -> None:
    """Cards and notices: the same text, and with the risky words emphasised."""
    emphasised = [s.replace("秘书", "**秘书**").replace("保密", "_保密_") for s in CORPUS]
    assert _offenders(GUARD.scan_markdown, CORPUS) == []
    assert _offenders(GUARD.scan_markdown, emphasised) == []


def test_no_multi_line_message_is_refused() -> None:
    """Sentences joined one per line, as a pasted notice arrives."""
    rng = random.Random(12)
    notices = ["\n".join(rng.sample(CORPUS, 8)) for _ in range(300)]
    assert _offenders(GUARD.scan, notices) == []


def test_no_sentence_is_refused_as_a_text_file() -> None:
    body = "\n".join(CORPUS)
    for encoding in ("utf-8", "gb18030", "utf-16"):
        assert GUARD.scan_bytes(body.encode(encoding)) is None, encoding


@pytest.mark.parametrize("width", ["full", "half"])
def test_no_sentence_is_refused_in_either_punctuation_width(width: str) -> None:
    """NFKC turns full-width punctuation into ASCII, which is where boundaries live."""
    half = str.maketrans("，：；（）！？", ",:;()!?")
    full = str.maketrans(",:;()!?", "，：；（）！？")
    texts = [s.translate(full if width == "full" else half) for s in CORPUS]
    assert _offenders(GUARD.scan, texts) == []
