"""Work-group governance (工作群组治理): find zombie, empty-shell and duplicate groups.

Why: in a government office every project, meeting and ad-hoc task spawns a
work group, and few are ever dissolved. Years later a unit has thousands of
groups, many of them dead (僵尸群), never used (空壳群) or near copies of each
other (重复群) — which scatters notices, keeps people in conversations they no
longer belong to and makes "which group is the real one?" a daily question.
An admin scoped to an org subtree asks for a report over the groups in their
scope; this module produces it.

The module is *pure*: no I/O, no clock, no store. The caller gathers one
:class:`GroupStats` per group (already filtered to the admin's scope), passes
``now_ms`` explicitly and renders the result with :func:`to_json` or
:func:`to_csv`. That keeps the rules testable to the millisecond and lets the
same code serve an HTTP endpoint, a CLI export or a scheduled job.

Rules (:func:`classify`)
========================

Let ``DAY = 86_400_000`` ms, ``age = now_ms - created_at``, and let a group
have *never had a message* when ``message_count == 0`` or
``last_message_at is None`` (either one is enough, so an inconsistent row is
treated as the less active reading). System notices (joins, renames…) are
not messages; the caller must already have excluded them from both fields.

Young-group protection
    A group with ``age < min_age_days * DAY`` is never flagged ``empty`` or
    ``zombie``: a group created yesterday has had no time to be used. A group
    exactly ``min_age_days`` old is no longer protected. A ``created_at`` in
    the future (clock skew) counts as young. The protection does *not* apply
    to ``duplicate``: a fresh copy of an existing group is exactly what the
    report should catch early.

empty (空壳群)
    ``len(members) <= empty_max_members`` (exactly ``empty_max_members``
    members is empty), **or** the group has never had a message.

zombie (僵尸群)
    Not empty, has had a message, and ``now_ms - last_message_at >=
    zombie_days * DAY`` (a last message exactly ``zombie_days`` ago makes a
    zombie; one millisecond later than that, it does not).

    ``empty`` and ``zombie`` are exclusive; ``empty`` wins, because "never
    used / nobody in it" is the stronger and more actionable statement.

duplicate (重复群)
    Only among groups with the *same, non-empty* ``unit_path`` (compared as
    exact strings; the caller normalises paths). Two groups are *similar*
    when ``jaccard(members) >= duplicate_threshold`` (threshold exactly met
    counts). Similar groups form an undirected graph; each connected
    component of two or more groups is a *cluster*. Note that this is
    transitive: if A~B and B~C, then A, B and C are one cluster even when
    ``jaccard(A, C)`` is below the threshold (it may even be 0). That is
    deliberate — an admin merging the cluster wants one target, not a
    tangle of pairwise suggestions.

    In each cluster the *keeper* is the most active group, by
    ``message_count`` (higher first), then ``last_message_at`` (later first,
    never-messaged last), then ``created_at`` (older first), then ``conv``
    (smaller first) — total and deterministic. Every other member of the
    cluster is reported once as ``duplicate`` with ``duplicate_of`` = the
    keeper and ``similarity`` = its Jaccard similarity *to the keeper*
    (possibly below the threshold for a transitively joined group; the
    reason then says so). The keeper itself is not reported as duplicate.

    A group can be both ``empty`` and ``duplicate`` (two findings), or both
    ``zombie`` and ``duplicate``.

Findings are ordered by ``(unit_path, kind, conv)``; kinds sort as strings
(``duplicate`` < ``empty`` < ``zombie``).

Complexity
==========

A unit can hold thousands of groups, so the duplicate search must not compare
every pair. :func:`similar_pairs` uses the classic *all-pairs* similarity
join (Bayardo et al., WWW 2007), whose ingredients are:

* an inverted index ``member -> groups``, so only groups sharing a member are
  ever compared;
* a *prefix filter*: members are ordered rarest first, and two sets with
  Jaccard ≥ t must share a member within the first ``|A| - α(|A|) + 1``
  members of each, where ``α(n)`` is the least overlap that can still reach t
  (``overlap / n ≥ t``). Only that prefix is indexed and probed, so a member
  that is in every group (the unit head) does not make the join quadratic;
* a *size filter*: Jaccard ≥ t implies ``min(|A|,|B|) / max(|A|,|B|) ≥ t``,
  so candidates of very different size are dropped before any intersection.

Every surviving candidate is verified exactly, so the result equals the
brute-force O(n²) comparison (the tests check this with Hypothesis). All
float comparisons use the same ``int / int`` quotients as :func:`jaccard`,
and rounding is monotone, so the filters can never drop a pair the exact
check would accept.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CSV_COLUMNS",
    "DAY_MS",
    "Finding",
    "FindingKind",
    "GovernanceRules",
    "GroupStats",
    "classify",
    "jaccard",
    "similar_pairs",
    "to_csv",
    "to_json",
]

DAY_MS = 86_400_000
"""One day in milliseconds; all day-based rules are multiples of this."""

FindingKind = Literal["zombie", "empty", "duplicate"]

CSV_COLUMNS: tuple[str, ...] = (
    "conv",
    "name",
    "unit_path",
    "kind",
    "reason",
    "member_count",
    "last_message_at",
    "duplicate_of",
    "similarity",
)
"""Column order shared by :func:`to_csv` and :func:`to_json`."""


@dataclass(frozen=True, slots=True)
class GroupStats:
    """What the rules need to know about one group; gathered by the caller.

    ``last_message_at`` and ``message_count`` must exclude system notices
    (member joined, group renamed…): those are produced by the server, not by
    people working in the group, so counting them would keep dead groups
    looking alive.
    """

    conv: str
    """Conversation id, ``"g:..."``."""
    name: str
    unit_path: str
    """The group's unit, e.g. ``"/jx/nc/nc-xh/"``; ``""`` if unknown."""
    owner: str
    members: frozenset[str]
    created_at: int
    """Creation time, ms since the epoch."""
    last_message_at: int | None
    """Time of the last non-notice message (ms), ``None`` if there was none."""
    message_count: int
    """Number of non-notice messages."""


@dataclass(frozen=True, slots=True)
class GovernanceRules:
    """Thresholds of :func:`classify`; the defaults suit a provincial office.

    Validated on construction so a bad admin setting fails loudly instead of
    silently flagging everything (``duplicate_threshold = 0`` would call every
    pair of groups a duplicate) or nothing.
    """

    zombie_days: int = 90
    empty_max_members: int = 2
    duplicate_threshold: float = 0.8
    min_age_days: int = 7
    """Groups younger than this are never flagged zombie or empty."""

    def __post_init__(self) -> None:
        if self.zombie_days < 1:
            raise ValueError(f"zombie_days must be >= 1, got {self.zombie_days}")
        if self.empty_max_members < 0:
            raise ValueError(f"empty_max_members must be >= 0, got {self.empty_max_members}")
        if self.min_age_days < 0:
            raise ValueError(f"min_age_days must be >= 0, got {self.min_age_days}")
        t = self.duplicate_threshold
        # Written so that NaN fails too. t > 0 is also what makes the inverted
        # index sound: with t == 0 two groups without a common member would match.
        if not (0.0 < t <= 1.0):
            raise ValueError(f"duplicate_threshold must be in (0, 1], got {t}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the governance report."""

    conv: str
    name: str
    unit_path: str
    kind: FindingKind
    reason: str
    """Human-readable explanation, Chinese then English."""
    member_count: int
    last_message_at: int | None
    duplicate_of: str | None = None
    """For ``duplicate``: the keeper of the cluster."""
    similarity: float | None = None
    """For ``duplicate``: Jaccard similarity to the keeper."""


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """``|a ∩ b| / |a ∪ b|``; two empty sets give 0.0.

    Why 0.0 and not 1.0 for two empty sets: groups without members share
    nobody, and calling them duplicates of each other would be noise (they
    are reported as empty anyway).
    """
    inter = len(a & b)
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


def _min_overlap(n: int, t: float) -> int:
    """Least ``k >= 1`` with ``k / n >= t`` (as floats), for ``n >= 1``, ``0 < t <= 1``.

    Why not just ``ceil(t * n)``: ``0.28 * 25 == 7.000000000000001``, so the
    product can overshoot by one and the prefix filter would then miss a
    pair whose exact check (``7 / 25 >= 0.28``) passes. Starting from that
    estimate and correcting against the very quotient the exact check uses
    keeps the two consistent.
    """
    k = min(n, max(1, math.ceil(t * n)))
    while k > 1 and (k - 1) / n >= t:
        k -= 1
    while k < n and k / n < t:
        k += 1
    return k


def _unit_pairs(groups: Sequence[GroupStats], t: float) -> list[tuple[int, int, float]]:
    """Index pairs ``(i, j, sim)`` with ``i < j`` and ``sim >= t`` within one unit.

    All-pairs join with prefix and size filtering; see the module docstring.
    """
    freq: Counter[str] = Counter()
    for g in groups:
        freq.update(g.members)
    # Rarest members first: the prefixes then consist of rare members, whose
    # posting lists are short. Ties broken by the id for determinism.
    rank = {m: r for r, m in enumerate(sorted(freq, key=lambda m: (freq[m], m)))}
    # Increasing size: every indexed group is no larger than the probing one,
    # so the size filter is a single comparison |B| / |A| >= t.
    order = sorted(range(len(groups)), key=lambda i: (len(groups[i].members), groups[i].conv))
    index: defaultdict[int, list[int]] = defaultdict(list)
    out: list[tuple[int, int, float]] = []
    for i in order:
        a = groups[i].members
        n = len(a)
        if n == 0:
            continue
        toks = sorted(rank[m] for m in a)
        prefix = toks[: n - _min_overlap(n, t) + 1]
        seen: set[int] = set()
        for tok in prefix:
            for j in index[tok]:
                if j in seen:
                    continue
                seen.add(j)
                b = groups[j].members
                if len(b) / n < t:
                    continue
                inter = len(a & b)
                sim = inter / (n + len(b) - inter)
                if sim >= t:
                    out.append((min(i, j), max(i, j), sim))
        for tok in prefix:
            index[tok].append(i)
    return out


def _by_unit(groups: Iterable[GroupStats]) -> dict[str, list[GroupStats]]:
    """Groups keyed by non-empty unit path; duplicate ``conv`` ids are refused.

    Why refuse: two rows for one group mean the caller's query joined wrong,
    and the group would then look like its own perfect duplicate.
    """
    units: dict[str, list[GroupStats]] = defaultdict(list)
    seen: set[str] = set()
    for g in groups:
        if g.conv in seen:
            raise ValueError(f"group {g.conv!r} given more than once")
        seen.add(g.conv)
        if g.unit_path:
            units[g.unit_path].append(g)
    return units


def similar_pairs(groups: Iterable[GroupStats], threshold: float) -> list[tuple[str, str, float]]:
    """All pairs ``(conv_a, conv_b, jaccard)`` with ``conv_a < conv_b``, same
    non-empty ``unit_path`` and similarity ``>= threshold``, sorted.

    The raw edges behind the duplicate clusters of :func:`classify`; public so
    a UI can show "which groups look alike" and so the tests can compare it to
    a brute-force reference.
    """
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    result: list[tuple[str, str, float]] = []
    for members in _by_unit(groups).values():
        for i, j, sim in _unit_pairs(members, threshold):
            a, b = sorted((members[i].conv, members[j].conv))
            result.append((a, b, sim))
    result.sort()
    return result


def _keeper_key(g: GroupStats) -> tuple[int, int, int, int, str]:
    """Sort key whose minimum is the most active group (see module docstring)."""
    never = g.last_message_at is None
    last = 0 if g.last_message_at is None else g.last_message_at
    return (-g.message_count, 1 if never else 0, -last, g.created_at, g.conv)


def _never_messaged(g: GroupStats) -> bool:
    return g.message_count <= 0 or g.last_message_at is None


def _days(ms: int) -> int:
    return ms // DAY_MS


def _lifecycle_finding(g: GroupStats, now_ms: int, rules: GovernanceRules) -> Finding | None:
    """The ``empty`` or ``zombie`` finding for ``g``, if any (never both)."""
    if now_ms - g.created_at < rules.min_age_days * DAY_MS:
        return None
    n = len(g.members)
    never = _never_messaged(g)
    if n <= rules.empty_max_members or never:
        zh: list[str] = []
        en: list[str] = []
        if n <= rules.empty_max_members:
            zh.append(f"成员仅 {n} 人（≤ {rules.empty_max_members}）")
            en.append(f"only {n} member(s) (<= {rules.empty_max_members})")
        if never:
            zh.append("建群以来从未发过消息")
            en.append("no message since creation")
        reason = f"空壳群：{'；'.join(zh)} / empty group: {'; '.join(en)}"
        return Finding(g.conv, g.name, g.unit_path, "empty", reason, n, g.last_message_at)
    assert g.last_message_at is not None  # not never-messaged
    idle = now_ms - g.last_message_at
    if idle >= rules.zombie_days * DAY_MS:
        d = _days(idle)
        reason = (
            f"僵尸群：已 {d} 天无消息（阈值 {rules.zombie_days} 天）"
            f" / zombie group: no message for {d} days (threshold {rules.zombie_days})"
        )
        return Finding(g.conv, g.name, g.unit_path, "zombie", reason, n, g.last_message_at)
    return None


def _find(parent: list[int], x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _duplicate_findings(members: Sequence[GroupStats], t: float) -> list[Finding]:
    """Cluster one unit's groups by similarity and point each at its keeper."""
    parent = list(range(len(members)))
    for i, j, _ in _unit_pairs(members, t):
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    clusters: defaultdict[int, list[GroupStats]] = defaultdict(list)
    for i, g in enumerate(members):
        clusters[_find(parent, i)].append(g)
    out: list[Finding] = []
    for cluster in clusters.values():
        if len(cluster) < 2:
            continue
        keeper = min(cluster, key=_keeper_key)
        size = len(cluster)
        for g in cluster:
            if g is keeper:
                continue
            sim = jaccard(g.members, keeper.members)
            if sim >= t:
                zh = f"与保留群「{keeper.name}」({keeper.conv}) 成员相似度 {sim:.2f} ≥ {t:.2f}"
                en = f"members {sim:.2f} similar to keeper {keeper.conv} (>= {t:.2f})"
            else:
                zh = (
                    f"经相似群传递与保留群「{keeper.name}」({keeper.conv}) 归入同一簇"
                    f"（直接相似度 {sim:.2f} < {t:.2f}）"
                )
                en = (
                    f"joined to keeper {keeper.conv} through similar groups"
                    f" (direct similarity {sim:.2f} < {t:.2f})"
                )
            reason = f"重复群：{zh}，簇内共 {size} 个群 / duplicate group: {en}, cluster of {size}"
            out.append(
                Finding(
                    g.conv,
                    g.name,
                    g.unit_path,
                    "duplicate",
                    reason,
                    len(g.members),
                    g.last_message_at,
                    duplicate_of=keeper.conv,
                    similarity=sim,
                )
            )
    return out


def classify(
    groups: Iterable[GroupStats], now_ms: int, rules: GovernanceRules = GovernanceRules()
) -> list[Finding]:
    """Report zombie, empty and duplicate groups; see the module docstring for the rules.

    Rules in short (``DAY`` = 86 400 000 ms):

    * groups with ``now_ms - created_at < min_age_days * DAY`` are never
      ``empty`` or ``zombie``;
    * ``empty``: ``len(members) <= empty_max_members`` or never a message
      (``message_count == 0`` or ``last_message_at is None``);
    * ``zombie``: not empty and ``now_ms - last_message_at >= zombie_days * DAY``;
    * ``duplicate``: within one non-empty ``unit_path``, connected components
      of the ``jaccard >= duplicate_threshold`` graph (transitive, so two
      members of a cluster may be below the threshold); every group but the
      most active one (the keeper) is reported once with ``duplicate_of`` =
      keeper. Independent of the other two kinds and of ``min_age_days``.

    Result order: ``(unit_path, kind, conv)``. Raises ``ValueError`` if a
    ``conv`` occurs twice in ``groups``.
    """
    items = list(groups)
    findings: list[Finding] = []
    for g in items:
        f = _lifecycle_finding(g, now_ms, rules)
        if f is not None:
            findings.append(f)
    for members in _by_unit(items).values():
        findings.extend(_duplicate_findings(members, rules.duplicate_threshold))
    findings.sort(key=lambda f: (f.unit_path, f.kind, f.conv))
    return findings


def to_json(findings: list[Finding]) -> list[dict[str, Any]]:
    """Findings as JSON-ready dicts with the keys of :data:`CSV_COLUMNS`.

    Timestamps stay integer milliseconds and ``similarity`` keeps full float
    precision; formatting is the client's business.
    """
    return [{col: getattr(f, col) for col in CSV_COLUMNS} for f in findings]


_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(value: str) -> str:
    """Neutralise spreadsheet formulas (CSV injection, OWASP).

    Why: group names are chosen by any user, and the export is opened in
    Excel by an admin. A name like ``=HYPERLINK("http://…")`` would otherwise
    run as a formula. A leading apostrophe makes Excel show the text as is.
    """
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


def to_csv(findings: list[Finding]) -> str:
    """Findings as CSV text: a UTF-8 BOM, a header row of :data:`CSV_COLUMNS`, one row each.

    * Quoting is done by :mod:`csv` (names may contain commas, quotes, line
      breaks); lines end in ``\\r\\n`` as RFC 4180 and Excel expect.
    * The text starts with ``\\ufeff`` (encoded: ``EF BB BF``). Why: Excel on
      Chinese Windows opens a BOM-less ``.csv`` in the ANSI code page (GBK)
      and shows UTF-8 Chinese as mojibake; the BOM makes it read UTF-8. Write
      the result with ``encoding="utf-8"`` (not ``utf-8-sig``, which would
      add a second BOM). Readers should strip it (``utf-8-sig`` does).
    * ``None`` becomes an empty cell; ``similarity`` is rounded to 4
      decimals for people (JSON keeps full precision).
    * Text cells starting with ``= + - @`` or a tab/CR get a leading ``'`` so
      a hostile group name cannot run as a spreadsheet formula.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for f in findings:
        writer.writerow(
            [
                _csv_text(f.conv),
                _csv_text(f.name),
                _csv_text(f.unit_path),
                f.kind,
                _csv_text(f.reason),
                f.member_count,
                "" if f.last_message_at is None else f.last_message_at,
                "" if f.duplicate_of is None else _csv_text(f.duplicate_of),
                "" if f.similarity is None else f"{f.similarity:.4f}",
            ]
        )
    return "\ufeff" + buf.getvalue()
