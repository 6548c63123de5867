"""How address-book search ranks a match. Pure.

A query matches a person in the first of these tiers that applies; results
come tier by tier, and inside a tier in the order of the key that tier
matched on (then user id), so paging is stable and every tier but the last
is one index range scan in the store; the last ("contains") is in pinyin
order:

0. the name is the query (``张三``)
1. the name starts with the query (``张`` → 张三, 张三丰)
2. the pinyin initials are the query (``zs`` → 张三)
3. the pinyin initials start with the query (``zs`` → 张三丰)
4. the full pinyin starts with the query (``zhangs`` → 张三)
5. the name contains the query elsewhere (``三`` → 张三)

Pinyin tiers apply only to a query in Latin letters (``query_key``).
"""

from __future__ import annotations

from enum import IntEnum

from imserver.directory.pinyin import NameKeys, query_key


class Tier(IntEnum):
    NAME_EXACT = 0
    NAME_PREFIX = 1
    INITIALS_EXACT = 2
    INITIALS_PREFIX = 3
    PINYIN_PREFIX = 4
    NAME_CONTAINS = 5


def match_tier(query: str, name: str, keys: NameKeys) -> Tier | None:
    """The tier in which ``query`` finds the person named ``name``, or None."""
    if name == query:
        return Tier.NAME_EXACT
    if name.startswith(query):
        return Tier.NAME_PREFIX
    key = query_key(query)
    if key is not None:
        if keys.initials == key:
            return Tier.INITIALS_EXACT
        if keys.initials.startswith(key):
            return Tier.INITIALS_PREFIX
        if keys.full.startswith(key):
            return Tier.PINYIN_PREFIX
    if query in name:
        return Tier.NAME_CONTAINS
    return None
