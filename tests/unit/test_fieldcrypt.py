"""Unit tests for imserver/fieldcrypt.py: field encryption at rest and blind indexes."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from imserver import fieldcrypt
from imserver.fieldcrypt import (
    ALGORITHMS,
    KEY_LENGTHS,
    DecryptError,
    FieldKey,
    Keyring,
    blind_index,
    normalise_index_value,
)

AES_KEY = FieldKey("k1", "aes-256-gcm", bytes(range(32)))
SM4_KEY = FieldKey("k2", "sm4-gcm", bytes(range(100, 116)))
CTX = "users.phone:alice"


def _ring(active: str = "k1") -> Keyring:
    return Keyring([AES_KEY, SM4_KEY], active=active)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _split(token: str) -> tuple[str, str, bytes]:
    version, key_id, payload = token.split(".")
    return version, key_id, base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))


def _join(version: str, key_id: str, raw: bytes) -> str:
    return f"{version}.{key_id}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode('ascii')}"


def _flip(raw: bytes, index: int) -> bytes:
    b = bytearray(raw)
    b[index] ^= 0x01
    return bytes(b)


# --- round trips -------------------------------------------------------------

PLAINTEXTS = [
    "13812341234",
    "11010519491231002X",
    "张三 北京市东城区某某街道办事处 ☎ 010-1234-5678",
    "",
    "长" * 10_000,
    "x" * 100_000,
]


@pytest.mark.parametrize("active", ["k1", "k2"], ids=ALGORITHMS)
@pytest.mark.parametrize(
    "plaintext", PLAINTEXTS, ids=["phone", "id", "zh", "empty", "zh-long", "long"]
)
def test_round_trip_both_algorithms(active: str, plaintext: str) -> None:
    ring = _ring(active)
    token = ring.encrypt(plaintext, context=CTX)
    assert token.isascii()
    assert token.startswith(f"v1.{active}.")
    assert Keyring.is_token(token)
    assert ring.decrypt(token, context=CTX) == plaintext


@pytest.mark.parametrize("active", ["k1", "k2"], ids=ALGORITHMS)
def test_token_layout(active: str) -> None:
    token = _ring(active).encrypt("abc", context=CTX)
    version, key_id, raw = _split(token)
    assert (version, key_id) == ("v1", active)
    # nonce | ciphertext (same length as plaintext in GCM) | tag
    assert len(raw) == fieldcrypt.NONCE_SIZE + 3 + fieldcrypt.TAG_SIZE
    assert "=" not in token


@pytest.mark.parametrize("active", ["k1", "k2"], ids=ALGORITHMS)
def test_same_plaintext_gives_different_tokens(active: str) -> None:
    ring = _ring(active)
    tokens = {ring.encrypt("13812341234", context=CTX) for _ in range(50)}
    assert len(tokens) == 50
    nonces = {_split(t)[2][: fieldcrypt.NONCE_SIZE] for t in tokens}
    assert len(nonces) == 50


@settings(max_examples=150, deadline=None)
@given(plaintext=st.text(), context=st.text(min_size=1), active=st.sampled_from(["k1", "k2"]))
def test_round_trip_property(plaintext: str, context: str, active: str) -> None:
    ring = _ring(active)
    token = ring.encrypt(plaintext, context=context)
    assert Keyring.is_token(token)
    assert ring.decrypt(token, context=context) == plaintext


# --- context binding and tampering --------------------------------------------


@pytest.mark.parametrize("active", ["k1", "k2"], ids=ALGORITHMS)
@pytest.mark.parametrize(
    "other", ["users.phone:bob", "users.id_number:alice", "users.phone:alice ", "USERS.PHONE:ALICE"]
)
def test_wrong_context_fails(active: str, other: str) -> None:
    ring = _ring(active)
    token = ring.encrypt("13812341234", context=CTX)
    with pytest.raises(DecryptError) as ei:
        ring.decrypt(token, context=other)
    assert ei.value.reason == "auth_failed"
    assert ei.value.reason == DecryptError.AUTH_FAILED
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("active", ["k1", "k2"], ids=ALGORITHMS)
@pytest.mark.parametrize("part", ["nonce", "ciphertext", "tag"])
def test_tampered_payload_fails_authentication(active: str, part: str) -> None:
    ring = _ring(active)
    token = ring.encrypt("13812341234", context=CTX)
    version, key_id, raw = _split(token)
    index = {"nonce": 0, "ciphertext": fieldcrypt.NONCE_SIZE + 2, "tag": len(raw) - 1}[part]
    bad = _join(version, key_id, _flip(raw, index))
    assert Keyring.is_token(bad)
    with pytest.raises(DecryptError) as ei:
        ring.decrypt(bad, context=CTX)
    assert ei.value.reason == "auth_failed"


@pytest.mark.parametrize("active", ["k1", "k2"], ids=ALGORITHMS)
def test_truncated_tag_fails(active: str) -> None:
    ring = _ring(active)
    version, key_id, raw = _split(ring.encrypt("13812341234", context=CTX))
    with pytest.raises(DecryptError) as ei:
        ring.decrypt(_join(version, key_id, raw[:-1]), context=CTX)
    assert ei.value.reason == "auth_failed"


def test_key_id_swapped_to_other_known_key_fails_authentication() -> None:
    ring = _ring("k1")
    _, _, raw = _split(ring.encrypt("13812341234", context=CTX))
    with pytest.raises(DecryptError) as ei:
        ring.decrypt(_join("v1", "k2", raw), context=CTX)
    assert ei.value.reason == "auth_failed"


def test_key_id_is_bound_even_with_identical_secret() -> None:
    # Same secret registered under two ids: the header is still authenticated.
    twin = FieldKey("k1-copy", "aes-256-gcm", AES_KEY.secret)
    ring = Keyring([AES_KEY, twin], active="k1")
    _, _, raw = _split(ring.encrypt("13812341234", context=CTX))
    with pytest.raises(DecryptError) as ei:
        ring.decrypt(_join("v1", "k1-copy", raw), context=CTX)
    assert ei.value.reason == "auth_failed"


def test_unknown_key_id() -> None:
    token = _ring("k1").encrypt("13812341234", context=CTX)
    only_k2 = Keyring([SM4_KEY], active="k2")
    with pytest.raises(DecryptError) as ei:
        only_k2.decrypt(token, context=CTX)
    assert ei.value.reason == "unknown_key"
    assert "'k1'" in str(ei.value)


def test_key_id_tampered_to_unknown_id() -> None:
    ring = _ring("k1")
    _, _, raw = _split(ring.encrypt("13812341234", context=CTX))
    with pytest.raises(DecryptError) as ei:
        ring.decrypt(_join("v1", "k9", raw), context=CTX)
    assert ei.value.reason == "unknown_key"


def test_same_id_different_secret_fails_authentication() -> None:
    token = _ring("k1").encrypt("13812341234", context=CTX)
    imposter = Keyring([Keyring.generate("k1", "aes-256-gcm")], active="k1")
    with pytest.raises(DecryptError) as ei:
        imposter.decrypt(token, context=CTX)
    assert ei.value.reason == "auth_failed"


def _valid_token() -> str:
    return _ring("k1").encrypt("13812341234", context=CTX)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "13812341234", id="plaintext"),
        pytest.param(lambda t: "v2" + t[2:], id="version"),
        pytest.param(lambda t: t.replace("v1.", "V1.", 1), id="version-case"),
        pytest.param(lambda t: t.replace(".k1.", ".K1.", 1), id="key-id-case"),
        pytest.param(lambda t: t.replace(".k1.", "..", 1), id="key-id-empty"),
        pytest.param(lambda t: t.replace(".k1.", f".{'k' * 33}.", 1), id="key-id-long"),
        pytest.param(lambda t: t + ".x", id="extra-part"),
        pytest.param(lambda t: t.rsplit(".", 1)[0], id="no-payload"),
        pytest.param(lambda t: t + "=", id="padding"),
        pytest.param(lambda t: t[:-3] + "+/a", id="std-alphabet"),
        pytest.param(lambda t: t + " ", id="trailing-space"),
        pytest.param(lambda t: t[:20], id="short-payload"),
        pytest.param(lambda t: t + "A", id="bad-length"),
    ],
)
def test_malformed_tokens(mangle: Callable[[str], str]) -> None:
    bad = mangle(_valid_token())
    ring = _ring()
    with pytest.raises(DecryptError) as ei:
        ring.decrypt(bad, context=CTX)
    assert ei.value.reason == "malformed"
    with pytest.raises(DecryptError) as ei:
        ring.needs_rotation(bad)
    assert ei.value.reason == "malformed"


def test_non_canonical_base64_is_malformed() -> None:
    # A 1-character plaintext gives a 29-byte payload = 39 characters, whose
    # last character carries 2 unused bits. Flipping one of them decodes to
    # the same bytes, but a second spelling of a token is still refused.
    ring = _ring()
    token = ring.encrypt("x", context=CTX)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(token.rsplit(".", 1)[1]) == 39
    sibling = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
    assert _split(sibling)[2] == _split(token)[2]
    with pytest.raises(DecryptError) as ei:
        ring.decrypt(sibling, context=CTX)
    assert ei.value.reason == "malformed"


def test_non_string_token_is_malformed() -> None:
    with pytest.raises(DecryptError) as ei:
        _ring().decrypt(b"v1.k1.abc", context=CTX)  # type: ignore[arg-type]
    assert ei.value.reason == "malformed"


@pytest.mark.parametrize("context", ["", None, b"users.phone:alice"])
def test_context_is_required(context: object) -> None:
    ring = _ring()
    with pytest.raises(ValueError, match="context"):
        ring.encrypt("x", context=context)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context"):
        ring.decrypt(_valid_token(), context=context)  # type: ignore[arg-type]


def test_plaintext_must_be_str() -> None:
    with pytest.raises(TypeError):
        _ring().encrypt(b"13812341234", context=CTX)  # type: ignore[arg-type]


# --- rotation ------------------------------------------------------------------


def test_rotation_aes_to_sm4() -> None:
    before = Keyring([AES_KEY, SM4_KEY], active="k1")
    old = before.encrypt("张三 13812341234", context=CTX)
    assert before.key_id_of(old) == "k1"
    assert not before.needs_rotation(old)

    after = Keyring([AES_KEY, SM4_KEY], active="k2")
    assert after.active_key_id == "k2"
    assert after.active_algorithm == "sm4-gcm"
    assert after.decrypt(old, context=CTX) == "张三 13812341234"
    assert after.needs_rotation(old)

    new = after.rotate(old, context=CTX)
    assert new.startswith("v1.k2.")
    assert not after.needs_rotation(new)
    assert after.decrypt(new, context=CTX) == "张三 13812341234"
    # Once every token is rotated the old key can go.
    k2_only = Keyring([SM4_KEY], active="k2")
    assert k2_only.decrypt(new, context=CTX) == "张三 13812341234"
    # The rotated token is still bound to its context.
    with pytest.raises(DecryptError) as ei:
        after.decrypt(new, context="users.phone:bob")
    assert ei.value.reason == "auth_failed"


def test_rotate_already_active_returns_same_token() -> None:
    ring = _ring("k2")
    token = ring.encrypt("13812341234", context=CTX)
    assert ring.rotate(token, context=CTX) == token


@pytest.mark.parametrize("active", ["k1", "k2"])
def test_rotate_refuses_bad_tokens(active: str) -> None:
    old = _ring("k1").encrypt("13812341234", context=CTX)
    ring = _ring(active)
    with pytest.raises(DecryptError) as ei:
        ring.rotate(old, context="users.phone:bob")
    assert ei.value.reason == "auth_failed"
    with pytest.raises(DecryptError) as ei:
        ring.rotate("13812341234", context=CTX)
    assert ei.value.reason == "malformed"


def test_is_token() -> None:
    assert Keyring.is_token(_valid_token())
    assert Keyring.is_token(_ring("k2").encrypt("", context=CTX))
    for value in ["", "13812341234", "11010519491231002X", "v1.k1.", "v1..AAAA", "张三", None, 42]:
        assert not Keyring.is_token(value)


# --- keys, keyring construction and config ------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_generate(algorithm: str) -> None:
    a = Keyring.generate("new-key_1", algorithm)
    b = Keyring.generate("new-key_1", algorithm)
    assert a.algorithm == algorithm
    assert len(a.secret) == KEY_LENGTHS[algorithm]
    assert a.secret != b.secret
    ring = Keyring([a], active="new-key_1")
    assert ring.decrypt(ring.encrypt("x", context=CTX), context=CTX) == "x"


def test_generate_rejects_unknown_algorithm_and_bad_id() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        Keyring.generate("k1", "aes-128-gcm")
    with pytest.raises(ValueError, match="key id"):
        Keyring.generate("Bad.Id", "sm4-gcm")


def test_key_lengths() -> None:
    assert KEY_LENGTHS == {"aes-256-gcm": 32, "sm4-gcm": 16}


@pytest.mark.parametrize(
    ("algorithm", "length"),
    [("aes-256-gcm", 16), ("aes-256-gcm", 24), ("aes-256-gcm", 31), ("aes-256-gcm", 33),
     ("sm4-gcm", 32), ("sm4-gcm", 15), ("sm4-gcm", 0)],
)  # fmt: skip
def test_wrong_key_length(algorithm: str, length: int) -> None:
    with pytest.raises(ValueError, match=rf"{KEY_LENGTHS[algorithm]}-byte key, got {length}"):
        FieldKey("k1", algorithm, bytes(length))


@pytest.mark.parametrize("key_id", ["", "K1", "a.b", "a:b", "a b", "张", "k" * 33])
def test_bad_key_ids(key_id: str) -> None:
    with pytest.raises(ValueError, match="key id"):
        FieldKey(key_id, "sm4-gcm", bytes(16))


def test_good_key_ids() -> None:
    for key_id in ["a", "0", "k" * 32, "2025-01_prod"]:
        assert FieldKey(key_id, "sm4-gcm", bytes(16)).key_id == key_id


def test_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown algorithm"):
        FieldKey("k1", "sm4-cbc", bytes(16))


def test_secret_not_in_repr() -> None:
    key = FieldKey("k1", "aes-256-gcm", b"S" * 32)
    assert "SSSS" not in repr(key)
    assert "k1" in repr(key)
    assert "SSSS" not in repr(Keyring([key], active="k1"))


def test_keyring_errors() -> None:
    with pytest.raises(ValueError, match="active key id 'k3'"):
        Keyring([AES_KEY, SM4_KEY], active="k3")
    with pytest.raises(ValueError, match="duplicate key id 'k1'"):
        Keyring([AES_KEY, FieldKey("k1", "sm4-gcm", bytes(16))], active="k1")
    with pytest.raises(ValueError, match="at least one key"):
        Keyring([], active="k1")


def test_keyring_revalidates_forced_keys() -> None:
    # A FieldKey whose fields were forced past __post_init__ is still rejected.
    bad = FieldKey("k1", "aes-256-gcm", bytes(32))
    object.__setattr__(bad, "secret", bytes(16))
    with pytest.raises(ValueError, match="32-byte key, got 16"):
        Keyring([bad], active="k1")
    bad2 = FieldKey("k1", "aes-256-gcm", bytes(32))
    object.__setattr__(bad2, "algorithm", "rot13")
    with pytest.raises(ValueError, match="unknown algorithm"):
        Keyring([bad2], active="k1")


def test_replace_revalidates() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(AES_KEY, algorithm="sm4-gcm")


def test_from_config() -> None:
    spec = f"k1:aes-256-gcm:{_b64(AES_KEY.secret)}, k2:SM4-GCM:{_b64(SM4_KEY.secret)} "
    ring = Keyring.from_config(spec, active="k2")
    assert ring.key_ids == ("k1", "k2")
    assert ring.active_key_id == "k2"
    # Interoperates with a keyring built from the same keys directly.
    token = _ring("k1").encrypt("13812341234", context=CTX)
    assert ring.decrypt(token, context=CTX) == "13812341234"
    assert ring.needs_rotation(token)


def test_from_config_accepts_urlsafe_and_unpadded_base64() -> None:
    secret = bytes([0xFB, 0xFF] * 16)  # encodes with '+' and '/' in standard base64
    std = _b64(secret)
    assert "+" in std or "/" in std
    url = base64.urlsafe_b64encode(secret).decode("ascii").rstrip("=")
    for enc in (std, url):
        ring = Keyring.from_config(f"k1:aes-256-gcm:{enc}", active="k1")
        assert ring.decrypt(_ring_with(secret).encrypt("x", context=CTX), context=CTX) == "x"


def _ring_with(secret: bytes) -> Keyring:
    return Keyring([FieldKey("k1", "aes-256-gcm", secret)], active="k1")


def test_to_config_entry_round_trip() -> None:
    keys = [Keyring.generate("a", "aes-256-gcm"), Keyring.generate("b", "sm4-gcm")]
    spec = ",".join(k.to_config_entry() for k in keys)
    ring = Keyring.from_config(spec, active="b")
    token = Keyring(keys, active="a").encrypt("身份证", context=CTX)
    assert ring.decrypt(token, context=CTX) == "身份证"


GOOD_AES = f"k1:aes-256-gcm:{_b64(bytes(32))}"
SECRET_B64 = _b64(b"\xaa" * 32)


@pytest.mark.parametrize(
    ("spec", "active", "message"),
    [
        ("", "k1", "spec is empty"),
        ("   ", "k1", "spec is empty"),
        (f"{GOOD_AES},", "k1", "entry #2 is empty"),
        (f"{GOOD_AES},,{GOOD_AES}", "k1", "entry #2 is empty"),
        (f"{GOOD_AES},k2:sm4-gcm", "k1", "entry #2 must be 'key_id:algorithm:base64key'"),
        (f"k2:sm4-gcm:{SECRET_B64}:x", "k2", "entry #1 must be"),
        (f"{GOOD_AES},K2:sm4-gcm:{_b64(bytes(16))}", "k1", "entry #2: key id 'K2'"),
        (f"{GOOD_AES},k2:sm4-cbc:{_b64(bytes(16))}", "k1", r"entry #2 \(key id 'k2'\): unknown"),
        (f"{GOOD_AES},k2:sm4-gcm:not*base64!", "k1", r"entry #2 \(key id 'k2'\): key is not"),
        (f"{GOOD_AES},k2:sm4-gcm:", "k1", r"entry #2 \(key id 'k2'\): key is not valid base64"),
        (
            f"{GOOD_AES},k2:sm4-gcm:{SECRET_B64}",
            "k1",
            r"entry #2 \(key id 'k2'\): sm4-gcm needs a 16",
        ),
        (
            f"k3:aes-256-gcm:{_b64(bytes(16))}",
            "k3",
            r"entry #1 \(key id 'k3'\): aes-256-gcm needs a 32",
        ),
        (f"{GOOD_AES},{GOOD_AES}", "k1", r"entry #2 \(key id 'k1'\): duplicate key id"),
        (GOOD_AES, "k2", "active field key id 'k2' is not in the spec"),
    ],
)
def test_from_config_errors_name_the_entry(spec: str, active: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as ei:
        Keyring.from_config(spec, active=active)
    # Key material never appears in error messages.
    assert SECRET_B64 not in str(ei.value)
    assert SECRET_B64[:8] not in str(ei.value)


# --- known-answer tests: the algorithms are the standard ones -------------------


def test_sm4_block_cipher_known_answer_gbt_32907() -> None:
    """GB/T 32907-2016 Appendix A example 1: proves algorithms.SM4 is the real SM4."""
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    assert (enc.update(key) + enc.finalize()).hex() == "681edf34d206965e86b3e94f536e4246"


def test_sm4_gcm_known_answer_rfc_8998() -> None:
    """RFC 8998 Appendix A.1 SM4-GCM vector, through the module's own SM4-GCM code path."""
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    nonce = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    pt = bytes.fromhex(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    )
    ct = bytes.fromhex(
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
    )
    tag = bytes.fromhex("83DE3541E4C2B58177E065A9BF7B62EC")
    aead = fieldcrypt._Aead("sm4-gcm", key)
    assert aead.seal(nonce, pt, aad) == ct + tag
    assert aead.open(nonce, ct + tag, aad) == pt


def test_aes_256_gcm_known_answer() -> None:
    """McGrew-Viega GCM spec test case 14 (AES-256, zero key/IV, one zero block)."""
    aead = fieldcrypt._Aead("aes-256-gcm", bytes(32))
    sealed = aead.seal(bytes(12), bytes(16), b"")
    assert sealed.hex() == "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"


# --- blind index ------------------------------------------------------------------

INDEX_KEY = b"i" * 32
OTHER_INDEX_KEY = b"j" * 32


@pytest.mark.parametrize(
    "variant",
    [
        "13812341234",
        "138 1234 1234",
        " 138-1234-1234 ",
        "138\u30001234\u30001234",  # ideographic space
        "１３８１２３４１２３４",  # full-width digits
        "138－1234－1234",  # full-width hyphen
        "138–1234—1234",  # en/em dash
        "138\t1234\n1234",
    ],
)
def test_blind_index_stable_under_formatting(variant: str) -> None:
    assert normalise_index_value(variant) == "13812341234"
    assert blind_index(INDEX_KEY, variant) == blind_index(INDEX_KEY, "13812341234")


def test_blind_index_id_number_check_character_case() -> None:
    assert blind_index(INDEX_KEY, "11010519491231002x") == blind_index(
        INDEX_KEY, "11010519491231002X"
    )


def test_blind_index_is_hmac_sha256_hex() -> None:
    got = blind_index(INDEX_KEY, "138 1234 1234")
    assert got == hmac.new(INDEX_KEY, b"13812341234", hashlib.sha256).hexdigest()
    assert len(got) == 64


def test_blind_index_differs_across_keys_and_values() -> None:
    assert blind_index(INDEX_KEY, "13812341234") != blind_index(OTHER_INDEX_KEY, "13812341234")
    assert blind_index(INDEX_KEY, "13812341234") != blind_index(INDEX_KEY, "13812341235")


def test_blind_index_rejects_short_keys() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        blind_index(b"short", "13812341234")


@settings(max_examples=100, deadline=None)
@given(digits=st.text(alphabet="0123456789", min_size=1, max_size=20), seps=st.data())
def test_blind_index_ignores_separators_property(digits: str, seps: st.DataObject) -> None:
    formatted = "".join(
        ch + seps.draw(st.sampled_from(["", " ", "-", "\u3000", " - "])) for ch in digits
    )
    assert blind_index(INDEX_KEY, formatted) == blind_index(INDEX_KEY, digits)
