"""Encryption at rest of sensitive fields (phone, ID number, sensitive card fields).

Why a field-level scheme and not just disk encryption: a database dump, a
backup copied to the wrong share or an over-broad SQL query must not yield the
clear phone numbers and ID numbers of civil servants and citizens. Each value
is sealed on its own, with a key that never lives in the database.

Algorithms. Two AEADs, chosen in config per key:

* ``aes-256-gcm`` — AES with a 32-byte key in GCM mode.
* ``sm4-gcm`` — SM4 (GB/T 32907-2016, the national block cipher) with a
  16-byte key in GCM mode, as profiled in GB/T 36624 and RFC 8998. Offices
  that must use national-standard cryptography (商用密码) pick this one.

Token format. Every ciphertext is stored as a compact ASCII string::

    v1.<key_id>.<base64url(nonce[12] | ciphertext | tag[16])>

base64url without padding. ``key_id`` is 1-32 of ``[a-z0-9_-]`` so it never
contains the ``.`` separator. Carrying the key id lets a keyring that holds
old and new keys decrypt anything written before a rotation, and lets a
rotation job find the rows that still use an old key.

Associated data. The GCM associated data is ``"imserver-fieldcrypt" NUL "v1"
NUL key_id NUL context`` (UTF-8). ``context`` names the row and field (e.g.
``"users.phone:alice"``): a ciphertext copied onto another user's row or into
another column fails authentication instead of silently showing the wrong
person's number. Binding the version and key id too means editing the token
header is detected, not just editing the payload. The context comes last, so
the encoding is unambiguous even if a context contains NUL.

Nonces. Each encryption draws a fresh 96-bit nonce from ``os.urandom``;
nonces are never derived from the data or a counter, so restarts and
concurrent workers cannot repeat one. With random 96-bit nonces the
probability of a collision (which in GCM leaks the XOR of two plaintexts and
lets an attacker forge tags) stays below 2^-32 only as long as a key seals at
most 2^32 messages (NIST SP 800-38D, section 8.3). The same bound applies to
SM4-GCM, which has the same 128-bit block and the same GCM construction.
Sensitive profile fields are written rarely, so this is far away, but rotate
keys on a schedule (e.g. yearly, and whenever staff with key access leave)
and certainly before any key approaches 2^31 encryptions.

Rotation. Add a new key to the config, make it active, restart; new writes
use it while old tokens still decrypt with their own key. Then run the
rotation command, which for each stored token calls :meth:`Keyring.rotate`
and writes the result back. When no token needs rotation any more, the old
key can be removed from the config. Never reuse a key id for a different
secret: tokens written under the old secret would then fail authentication.

Lookups. Encrypted values cannot be searched; :func:`blind_index` gives a
keyed, deterministic index for equality lookups (see its docstring).

This module is pure: no I/O besides ``os.urandom``, no mutable global state
(only a cached probe of whether OpenSSL offers SM4).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ALGORITHMS",
    "KEY_LENGTHS",
    "MIN_INDEX_KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "TOKEN_VERSION",
    "DecryptError",
    "DecryptReason",
    "FieldKey",
    "Keyring",
    "blind_index",
    "normalise_index_value",
]

ALGORITHMS: Final = ("aes-256-gcm", "sm4-gcm")
#: Required secret length in bytes per algorithm.
KEY_LENGTHS: Final[dict[str, int]] = {"aes-256-gcm": 32, "sm4-gcm": 16}
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
TOKEN_VERSION: Final = "v1"
#: Shortest key accepted by :func:`blind_index` (32 bytes recommended).
MIN_INDEX_KEY_SIZE: Final = 16

_KEY_ID = re.compile(r"[a-z0-9_-]{1,32}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
# nonce + tag with an empty plaintext = 28 bytes = 38 base64url characters.
_MIN_PAYLOAD_CHARS: Final = -(-(NONCE_SIZE + TAG_SIZE) * 4 // 3)
_TOKEN = re.compile(rf"v1\.[a-z0-9_-]{{1,32}}\.[A-Za-z0-9_-]{{{_MIN_PAYLOAD_CHARS},}}")
_AAD_PREFIX: Final = b"imserver-fieldcrypt\x00" + TOKEN_VERSION.encode("ascii") + b"\x00"
# ASCII hyphen plus the Unicode dashes and minus signs an IME or a word
# processor may substitute for it (full-width U+FF0D becomes "-" under NFKC).
_DASHES: Final = frozenset("-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63")

DecryptReason = Literal["malformed", "unknown_key", "auth_failed"]


class DecryptError(ValueError):
    """A stored token could not be turned back into its plaintext.

    ``reason`` lets callers tell apart data that is not a token at all
    (``"malformed"``), a token sealed with a key that is no longer configured
    (``"unknown_key"``: an operations problem, fix the config) and a token that
    fails authentication (``"auth_failed"``: tampering, a value copied from
    another row/field, or a key id reused for a different secret).
    """

    MALFORMED: Final = "malformed"
    UNKNOWN_KEY: Final = "unknown_key"
    AUTH_FAILED: Final = "auth_failed"

    def __init__(self, reason: DecryptReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: DecryptReason = reason


def _validate_key(key_id: object, algorithm: object, secret: object) -> None:
    """Raise ``ValueError`` unless the three parts form a usable key."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r} must be 1-32 characters of a-z, 0-9, '_' or '-'")
    if not isinstance(algorithm, str) or algorithm not in KEY_LENGTHS:
        raise ValueError(
            f"key {key_id!r}: unknown algorithm {algorithm!r} (use one of {', '.join(ALGORITHMS)})"
        )
    if not isinstance(secret, bytes):
        raise ValueError(f"key {key_id!r}: secret must be bytes")
    want = KEY_LENGTHS[algorithm]
    if len(secret) != want:
        # Never echo the secret itself, only its length.
        raise ValueError(
            f"key {key_id!r}: {algorithm} needs a {want}-byte key, got {len(secret)} bytes"
        )


@dataclass(frozen=True, slots=True)
class FieldKey:
    """One named data-encryption key.

    Validated on construction so an unusable key cannot exist; ``secret`` is
    left out of ``repr`` so keys never end up in logs or tracebacks.
    """

    key_id: str
    algorithm: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _validate_key(self.key_id, self.algorithm, self.secret)

    def to_config_entry(self) -> str:
        """Return ``key_id:algorithm:base64key`` for :meth:`Keyring.from_config`.

        The result contains the secret: show it once to the operator who
        stores it, never log it.
        """
        return f"{self.key_id}:{self.algorithm}:{base64.b64encode(self.secret).decode('ascii')}"


class _Aead:
    """GCM seal/open for one key, hiding the API difference between the two ciphers.

    ``cryptography`` has a one-shot ``AESGCM`` class but SM4-GCM is only
    reachable through the streaming ``Cipher`` API; both produce the standard
    ``ciphertext | 16-byte tag`` layout.
    """

    __slots__ = ("_aes", "_algorithm", "_secret")

    def __init__(self, algorithm: str, secret: bytes) -> None:
        self._algorithm = algorithm
        self._secret = secret
        self._aes = AESGCM(secret) if algorithm == "aes-256-gcm" else None

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if self._aes is not None:
            return self._aes.encrypt(nonce, plaintext, aad)
        enc = Cipher(algorithms.SM4(self._secret), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        body = enc.update(plaintext) + enc.finalize()
        return body + enc.tag

    def open(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Return the plaintext or raise ``InvalidTag``."""
        if self._aes is not None:
            return self._aes.decrypt(nonce, sealed, aad)
        body, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
        dec = Cipher(
            algorithms.SM4(self._secret), modes.GCM(nonce, tag, min_tag_length=TAG_SIZE)
        ).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(body) + dec.finalize()


@functools.cache
def _sm4_gcm_available() -> bool:
    """Whether the linked OpenSSL offers SM4-GCM (some FIPS builds strip SM4)."""
    try:
        _Aead("sm4-gcm", bytes(16)).seal(bytes(NONCE_SIZE), b"", b"")
    except UnsupportedAlgorithm:
        return False
    return True


def _aad(key_id: str, context: str) -> bytes:
    return _AAD_PREFIX + key_id.encode("ascii") + b"\x00" + context.encode("utf-8")


def _check_context(context: object) -> str:
    # An empty context would silently drop the row/field binding that stops
    # ciphertexts being swapped between rows, so it is a programming error.
    if not isinstance(context, str) or not context:
        raise ValueError("context must be a non-empty string such as 'users.phone:alice'")
    return context


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Strict, canonical base64url (no padding) decode; ``None`` if invalid.

    Canonical means re-encoding gives the same text: otherwise the unused low
    bits of the last character could be flipped and yield a different token
    string for the same ciphertext.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64url_encode(data) == text else None


def _b64_key_decode(text: str) -> bytes | None:
    """Decode a config key: standard or URL-safe alphabet, padding optional."""
    text = text.strip().translate(str.maketrans("-_", "+/")).rstrip("=")
    if not text or len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse(token: object) -> tuple[str, bytes, bytes]:
    """Split a token into (key_id, nonce, ciphertext|tag) or raise ``DecryptError``."""
    if not isinstance(token, str):
        raise DecryptError("malformed", f"token must be a string, not {type(token).__name__}")
    parts = token.split(".")
    if len(parts) != 3:
        raise DecryptError("malformed", "token must have the form v1.<key_id>.<payload>")
    version, key_id, payload = parts
    if version != TOKEN_VERSION:
        raise DecryptError("malformed", f"unsupported token version {version[:8]!r}")
    if not _KEY_ID.fullmatch(key_id):
        raise DecryptError("malformed", "token key id is not a valid key id")
    raw = _b64url_decode(payload)
    if raw is None:
        raise DecryptError("malformed", "token payload is not canonical base64url")
    if len(raw) < NONCE_SIZE + TAG_SIZE:
        raise DecryptError("malformed", "token payload is too short to hold a nonce and tag")
    return key_id, raw[:NONCE_SIZE], raw[NONCE_SIZE:]


class Keyring:
    """The set of field keys the server knows, one of them active for new writes.

    Immutable after construction: to switch the active key build a new
    keyring (normally from config at start-up).
    """

    __slots__ = ("_active", "_aeads", "_keys")

    def __init__(self, keys: Iterable[FieldKey], active: str) -> None:
        by_id: dict[str, FieldKey] = {}
        for key in keys:
            if not isinstance(key, FieldKey):
                raise ValueError(f"keyring entries must be FieldKey, not {type(key).__name__}")
            # FieldKey validates itself; re-check so a keyring never trusts an
            # object whose fields were forced past __post_init__.
            _validate_key(key.key_id, key.algorithm, key.secret)
            if key.key_id in by_id:
                raise ValueError(f"duplicate key id {key.key_id!r}")
            if key.algorithm == "sm4-gcm" and not _sm4_gcm_available():
                raise ValueError(
                    f"key {key.key_id!r}: sm4-gcm is not supported by this OpenSSL build"
                )
            by_id[key.key_id] = key
        if not by_id:
            raise ValueError("keyring needs at least one key")
        if active not in by_id:
            raise ValueError(
                f"active key id {active!r} is not one of the configured keys "
                f"({', '.join(sorted(by_id))})"
            )
        self._keys = by_id
        self._active = by_id[active]
        self._aeads = {kid: _Aead(k.algorithm, k.secret) for kid, k in by_id.items()}

    def __repr__(self) -> str:
        return f"Keyring(keys={sorted(self._keys)!r}, active={self._active.key_id!r})"

    @property
    def active_key_id(self) -> str:
        """Key id new tokens are sealed with."""
        return self._active.key_id

    @property
    def active_algorithm(self) -> str:
        """Algorithm of the active key (for start-up logs and health output)."""
        return self._active.algorithm

    @property
    def key_ids(self) -> tuple[str, ...]:
        """All configured key ids, sorted."""
        return tuple(sorted(self._keys))

    @classmethod
    def from_config(cls, spec: str, active: str) -> Keyring:
        """Build a keyring from ``"id:algorithm:base64key,id2:algorithm:base64key"``.

        One string so the whole keyring fits in one environment variable or
        secret-manager entry. Whitespace around entries is ignored, algorithm
        names are case-insensitive and keys may use the standard or URL-safe
        base64 alphabet, with or without padding. Errors name the entry by
        position and key id but never include key material.
        """
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("field key spec is empty; expected 'key_id:algorithm:base64key,...'")
        keys: list[FieldKey] = []
        seen: set[str] = set()
        for n, entry in enumerate(spec.split(","), start=1):
            entry = entry.strip()
            where = f"field key entry #{n}"
            if not entry:
                raise ValueError(f"{where} is empty (stray comma?)")
            parts = entry.split(":")
            if len(parts) != 3:
                raise ValueError(
                    f"{where} must be 'key_id:algorithm:base64key' (found {len(parts)} "
                    "':'-separated parts)"
                )
            key_id, algorithm, b64 = (p.strip() for p in parts)
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(
                    f"{where}: key id {key_id[:40]!r} must be 1-32 characters of a-z, 0-9, "
                    "'_' or '-'"
                )
            where = f"{where} (key id {key_id!r})"
            algorithm = algorithm.lower()
            if algorithm not in KEY_LENGTHS:
                raise ValueError(
                    f"{where}: unknown algorithm {algorithm[:40]!r} "
                    f"(use one of {', '.join(ALGORITHMS)})"
                )
            secret = _b64_key_decode(b64)
            if secret is None:
                raise ValueError(f"{where}: key is not valid base64")
            want = KEY_LENGTHS[algorithm]
            if len(secret) != want:
                raise ValueError(
                    f"{where}: {algorithm} needs a {want}-byte key, got {len(secret)} bytes"
                )
            if key_id in seen:
                raise ValueError(f"{where}: duplicate key id")
            seen.add(key_id)
            keys.append(FieldKey(key_id, algorithm, secret))
        if active not in seen:
            raise ValueError(
                f"active field key id {active!r} is not in the spec ({', '.join(sorted(seen))})"
            )
        return cls(keys, active)

    @staticmethod
    def generate(key_id: str, algorithm: str) -> FieldKey:
        """Return a new random key from ``os.urandom`` (the kernel CSPRNG)."""
        if algorithm not in KEY_LENGTHS:
            raise ValueError(
                f"unknown algorithm {algorithm!r} (use one of {', '.join(ALGORITHMS)})"
            )
        return FieldKey(key_id, algorithm, os.urandom(KEY_LENGTHS[algorithm]))

    def encrypt(self, plaintext: str, *, context: str) -> str:
        """Seal ``plaintext`` with the active key, bound to ``context``.

        A fresh random nonce per call means equal plaintexts give different
        tokens, so the stored column reveals nothing about which users share a
        value (use :func:`blind_index` for lookups).
        """
        if not isinstance(plaintext, str):
            raise TypeError(f"plaintext must be str, not {type(plaintext).__name__}")
        context = _check_context(context)
        key_id = self._active.key_id
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aeads[key_id].seal(nonce, plaintext.encode("utf-8"), _aad(key_id, context))
        return f"{TOKEN_VERSION}.{key_id}.{_b64url_encode(nonce + sealed)}"

    def decrypt(self, token: str, *, context: str) -> str:
        """Open a token with the key named in it; raise :class:`DecryptError`.

        Uses the token's own key id, not the active key, so tokens written
        before a rotation keep working until they are rewritten.
        """
        context = _check_context(context)
        key_id, nonce, sealed = _parse(token)
        aead = self._aeads.get(key_id)
        if aead is None:
            raise DecryptError(
                "unknown_key",
                f"token key id {key_id!r} is not configured (have {', '.join(self.key_ids)})",
            )
        try:
            raw = aead.open(nonce, sealed, _aad(key_id, context))
        except InvalidTag:
            raise DecryptError(
                "auth_failed",
                f"token with key id {key_id!r} failed authentication for context "
                f"{context!r} (tampered, copied from another row/field, or wrong key)",
            ) from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # pragma: no cover - only if someone sealed non-UTF-8
            raise DecryptError("malformed", "plaintext is not valid UTF-8") from None

    def key_id_of(self, token: str) -> str:
        """Return the key id a token was sealed with (``DecryptError`` if malformed)."""
        return _parse(token)[0]

    def needs_rotation(self, token: str) -> bool:
        """True if the token was sealed with a key other than the active one.

        Only parses the token; it does not authenticate it. Raises
        :class:`DecryptError` (``malformed``) for values that are not tokens,
        so check :meth:`is_token` first when old plaintext may still be stored.
        """
        return self.key_id_of(token) != self._active.key_id

    def rotate(self, token: str, *, context: str) -> str:
        """Re-seal a token under the active key.

        A token already under the active key is authenticated and returned
        unchanged: re-encrypting it would only spend nonces and cause
        needless writes. Errors are those of :meth:`decrypt`, so a rotation
        job never launders a corrupt or misplaced value into a fresh token.
        """
        plaintext = self.decrypt(token, context=context)
        if not self.needs_rotation(token):
            return token
        return self.encrypt(plaintext, context=context)

    @staticmethod
    def is_token(value: object) -> bool:
        """Cheap syntactic check that a stored value is a ciphertext token.

        For migrations that must tell already-encrypted values from old
        plaintext. A phone or ID number can never match (they cannot start
        with ``v1.``); :meth:`decrypt` remains the authority on validity.
        """
        return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def normalise_index_value(value: str) -> str:
    """Canonical form of a value for :func:`blind_index`.

    NFKC (full-width digits and spaces from Chinese IMEs become ASCII), then
    all whitespace and dash characters removed, then upper-cased (so an ID
    number's check character ``x`` equals ``X``). ``"138 1234 1234"``,
    ``"138-1234-1234"`` and ``"１３８１２３４１２３４"`` all become
    ``"13812341234"``.
    """
    text = unicodedata.normalize("NFKC", value)
    return "".join(ch for ch in text if not ch.isspace() and ch not in _DASHES).upper()


def blind_index(key: bytes, value: str) -> str:
    """Keyed equality index of a sensitive value: HMAC-SHA256 hex of its normal form.

    Why: field ciphertexts are randomised, so the server cannot find "the
    user with phone 13812341234" without decrypting every row. Deterministic
    encryption would allow the lookup but would leak, for the whole column,
    which rows share a value. A keyed HMAC stored next to the ciphertext
    leaks only what a lookup needs: the index of a searched value equals the
    index of the rows holding it. Without the key the index is useless for
    guessing; with it, low-entropy values like phone numbers (about 10^10
    possibilities) are brute-forceable, so guard this key exactly like the
    encryption keys and keep it separate from them (ideally one key per
    field, so equal values in different fields do not share an index).

    The index does not change when encryption keys rotate; changing the
    index key means recomputing every index from the decrypted values.
    Values that normalise to the empty string all share one index, so store
    NULL for absent values instead of indexing ``""``.
    """
    if not isinstance(key, bytes) or len(key) < MIN_INDEX_KEY_SIZE:
        raise ValueError(
            f"blind index key must be at least {MIN_INDEX_KEY_SIZE} bytes (32 recommended)"
        )
    normal = normalise_index_value(value)
    return hmac.new(key, normal.encode("utf-8"), hashlib.sha256).hexdigest()
