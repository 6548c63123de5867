"""Unit tests for imserver/tokens.py: signed, expiring, device-bound user tokens."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from imserver.errors import TokenExpired, TokenInvalid
from imserver.tokens import ALGORITHM, LEEWAY_S, TokenSigner, load_or_create_secret

SECRET = "k" * 40
OTHER_SECRET = "z" * 40


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "dev": "phone-1",
        "typ": "user",
        "iat": now,
        "exp": now + 3600,
        "jti": "abc",
    }
    for k, v in over.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def _hand_made(secret: str = SECRET, **over: Any) -> str:
    return jwt.encode(_claims(**over), secret, algorithm=ALGORITHM)


def test_mint_verify_round_trip() -> None:
    signer = TokenSigner(SECRET)
    before = int(time.time())
    token = signer.mint("alice", "phone-1", 600)
    claims = signer.verify(token)
    assert claims.user == "alice"
    assert claims.device == "phone-1"
    assert before <= claims.issued_at <= int(time.time())
    assert claims.expires_at == claims.issued_at + 600
    assert claims.token_id


def test_token_is_a_standard_hs256_jwt() -> None:
    token = TokenSigner(SECRET).mint("alice", "pc", 60)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "alice" and decoded["dev"] == "pc" and decoded["typ"] == "user"


def test_tokens_have_distinct_ids() -> None:
    signer = TokenSigner(SECRET)
    ids = {signer.verify(signer.mint("alice", "pc", 60)).token_id for _ in range(20)}
    assert len(ids) == 20


def test_mint_with_explicit_now() -> None:
    signer = TokenSigner(SECRET)
    now = time.time() - 100
    claims = signer.verify(signer.mint("alice", "pc", 3600, now=now))
    assert claims.issued_at == int(now)
    assert claims.expires_at == int(now) + 3600


def test_token_minted_elsewhere_with_the_secret_is_accepted() -> None:
    claims = TokenSigner(SECRET).verify(_hand_made())
    assert (claims.user, claims.device, claims.token_id) == ("alice", "phone-1", "abc")


def test_expired_token() -> None:
    signer = TokenSigner(SECRET)
    token = signer.mint("alice", "pc", 60, now=time.time() - 3600)
    with pytest.raises(TokenExpired) as info:
        signer.verify(token)
    assert info.value.code == "token_expired"


def test_expiry_has_small_leeway_only() -> None:
    signer = TokenSigner(SECRET)
    just_expired = signer.mint("alice", "pc", 60, now=time.time() - 60 - LEEWAY_S + 2)
    assert signer.verify(just_expired).user == "alice"
    long_expired = signer.mint("alice", "pc", 60, now=time.time() - 60 - LEEWAY_S - 2)
    with pytest.raises(TokenExpired):
        signer.verify(long_expired)


def test_forged_signature() -> None:
    token = TokenSigner(SECRET).mint("alice", "pc", 600)
    header, payload, sig = token.split(".")
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    with pytest.raises(TokenInvalid) as info:
        TokenSigner(SECRET).verify(f"{header}.{payload}.{flipped}")
    assert info.value.code == "token_invalid"


def test_tampered_payload() -> None:
    token = TokenSigner(SECRET).mint("alice", "pc", 600)
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenInvalid):
        TokenSigner(SECRET).verify(f"{header}.{forged}.{sig}")


def test_token_from_another_secret() -> None:
    token = TokenSigner(OTHER_SECRET).mint("alice", "pc", 600)
    with pytest.raises(TokenInvalid):
        TokenSigner(SECRET).verify(token)


def test_alg_none_token_rejected() -> None:
    token = jwt.encode(_claims(), None, algorithm="none")
    with pytest.raises(TokenInvalid):
        TokenSigner(SECRET).verify(token)


def test_other_hmac_algorithm_rejected() -> None:
    secret = "k" * 64  # long enough for HS512
    token = jwt.encode(_claims(), secret, algorithm="HS512")
    with pytest.raises(TokenInvalid):
        TokenSigner(secret).verify(token)


@pytest.mark.parametrize(
    "garbage", ["", "garbage", "a.b.c", "eyJ.eyJ.sig", "x" * 5000, "...", "é.é.é"]
)
def test_garbage_tokens(garbage: str) -> None:
    with pytest.raises(TokenInvalid):
        TokenSigner(SECRET).verify(garbage)


@pytest.mark.parametrize("typ", ["admin", "refresh", "", 1])
def test_wrong_typ_claim(typ: Any) -> None:
    with pytest.raises(TokenInvalid):
        TokenSigner(SECRET).verify(_hand_made(typ=typ))


@pytest.mark.parametrize("missing", ["dev", "sub", "typ", "exp", "iat"])
def test_missing_required_claim(missing: str) -> None:
    with pytest.raises(TokenInvalid):
        TokenSigner(SECRET).verify(_hand_made(**{missing: None}))


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", "bad user"), ("sub", 5), ("sub", ""), ("dev", "a/b"), ("dev", ["pc"])],
)
def test_invalid_user_or_device_claims(claim: str, value: Any) -> None:
    with pytest.raises(TokenInvalid):
        TokenSigner(SECRET).verify(_hand_made(**{claim: value}))


@pytest.mark.parametrize("secret", ["", "short", "k" * 31])
def test_short_secret_rejected(secret: str) -> None:
    with pytest.raises(ValueError):
        TokenSigner(secret)


def test_secret_of_32_chars_accepted() -> None:
    signer = TokenSigner("k" * 32)
    assert signer.verify(signer.mint("alice", "pc", 60)).user == "alice"


@pytest.mark.parametrize(("user", "device"), [("bad user", "pc"), ("alice", ""), ("", "pc")])
def test_mint_rejects_invalid_ids(user: str, device: str) -> None:
    with pytest.raises(ValueError):
        TokenSigner(SECRET).mint(user, device, 60)


# -- the generated secret -------------------------------------------------------------
def test_configured_secret_is_used_as_is(tmp_path: Path) -> None:
    assert load_or_create_secret(SECRET, tmp_path / "data") == SECRET
    assert not (tmp_path / "data").exists()


def test_secret_created_once_with_private_mode(tmp_path: Path) -> None:
    data = tmp_path / "data" / "nested"
    first = load_or_create_secret("", data)
    path = data / "secret.key"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert path.read_text().strip() == first
    assert not list(data.glob("*.tmp"))

    second = load_or_create_secret("", data)
    assert second == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # and it is a usable signing key
    signer = TokenSigner(second)
    assert signer.verify(TokenSigner(first).mint("alice", "pc", 60)).user == "alice"


def test_different_data_dirs_get_different_secrets(tmp_path: Path) -> None:
    assert load_or_create_secret("", tmp_path / "a") != load_or_create_secret("", tmp_path / "b")
