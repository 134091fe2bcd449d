"""Sealed records and key boxes: the site format v2 confidentiality layer (pure, no I/O).

Why this exists
---------------
In site format 1 every record was public JSON keyed by ``HMAC(hash_key, identifier)``
with the hash key in the public manifest, so anyone holding the site could sweep the ID
space and recover every listed person's ID number in milliseconds (measured: 1.9 ms per
person). Format 2 changes three things, all defined here once for the publisher and the
client:

* **The hash key is secret.** It travels only inside each registered subscriber's
  :func:`~intercept_sdk._protocol.signing.seal_box`, addressed by an opaque
  :func:`box_locator` and padded to one size per version (:func:`pad`), so the site names
  no subscriber and no restricted audience and reveals only counts and sizes.
* **A record opens only with an identifier in hand.** Its body is AES-256-GCM under a
  per-record key; that key is wrapped once per identifier of the entry (debtor, legal
  representative, officers, organisation code) under a key-encryption key derived from
  the identifier (:func:`kek`). The lookup index is only a 32-bit :func:`tag` of the
  identifier, shared by unrelated identifiers, so a cache lists nobody: a lookup by an ID
  decrypts the record it matches and nothing enumerates the rest.
* **A work factor.** :class:`WorkFactor` (in the signed manifest) makes :func:`kek`
  memory-hard (scrypt) for publishers who want a leaked hash key to cost years of CPU to
  sweep. A miss never pays it: only an identifier whose 32-bit tag is present in the list
  (the listed ones, plus about 0.35 % of others at 10M entries) derives a KEK.

Guarantees
----------
* Deterministic: the same hash key, entry and plaintext always give the same sealed line,
  so unchanged records stay byte-identical across versions (deltas stay small) and the
  publisher's fast and slow paths can be compared byte for byte.
* No AES-GCM nonce is ever reused with one key for two different plaintexts: a record key
  is derived from the record's own plaintext digest (one plaintext per key, zero nonce),
  and a wrap's nonce is derived from the record key and the relation it carries.
* Every parser here is strict and raises :class:`~intercept_sdk._exceptions.FormatError`
  (malformed) or :class:`~intercept_sdk._exceptions.VerificationError` (does not open);
  nothing returns partially parsed data.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import itertools
import json
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .._exceptions import ConfigurationError, FormatError, VerificationError
from .keyedhash import hmac_sha256, identifier_key

__all__ = [
    "BOX_PAD_QUANTUM",
    "MAX_WRAPS",
    "SITE_SPEC",
    "TAG_BYTES",
    "BoxContents",
    "IdentifierKind",
    "SealedRecord",
    "WorkFactor",
    "box_context",
    "box_locator",
    "box_payload",
    "identifier_secret",
    "kek",
    "kek_function",
    "lines_sha256",
    "open_body",
    "open_packed",
    "open_sealed",
    "open_wrap",
    "pack_sealed",
    "pad",
    "padded_size",
    "parse_box_payload",
    "parse_sealed",
    "record_id",
    "seal_record",
    "tag",
    "unpack_sealed",
    "unpad",
    "wraps_of",
]

#: The site format these rules define; a manifest of another ``spec`` is refused.
SITE_SPEC: Final = 2
#: Bytes of the identifier secret kept as the public lookup tag (a 32-bit bucket).
TAG_BYTES: Final = 4
#: Most wraps one record may carry (an entity with many officers); more is malformed.
MAX_WRAPS: Final = 64
#: Boxes are padded to a multiple of this many bytes (and all to one size per version).
BOX_PAD_QUANTUM: Final = 4096
#: Largest sealed body accepted (a record is a few hundred bytes; this caps a tampered one).
MAX_BODY: Final = 64 * 1024
#: Largest plaintext a body may inflate to (the cap of a decompression bomb).
MAX_PLAINTEXT: Final = 256 * 1024

# A sealed body is the raw DEFLATE of the plaintext record with this preset dictionary,
# then AES-GCM: the fixed skeleton of the canonical JSON records (field names in order,
# values' common words: courts, case-number parts, obligations, provinces). Measured on
# 3,000 synthetic records: 627 bytes of JSON on average, 444 deflated without it, 184
# with it (17 us to compress, 1.3 us to inflate), which makes the snapshot about half as
# large as without compression; with the minimised fields of decision 0020, 394 bytes
# deflate to 143. Part of the protocol: changing a byte changes every body.
_BODY_DICT: Final = (
    # provinces and their abbreviations (case numbers carry the abbreviation)
    "北京市天津市河北省山西省内蒙古自治区辽宁省吉林省黑龙江省上海市江苏省浙江省安徽省福建省"
    "江西省山东省河南省湖北省湖南省广东省广西壮族自治区海南省重庆市四川省贵州省云南省西藏自治区"
    "陕西省甘肃省青海省宁夏回族自治区新疆维吾尔自治区京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云藏陕甘青宁新"
    # formulaic phrases of judgments and mediation documents
    "劳动报酬赔偿款合同价款保证金违约金垫付款工程款租金货款借款本金及利息购房款人民币"
    "并承担案件受理费元，诉讼费用由被告负担，连带清偿责任，应于调解书生效后日内给付，支付"
    "给付申请执行人元及迟延履行期间的债务利息，被执行人被告于本判决生效之日起十日内偿还原告"
    # entity skeleton, canonical key order
    '{"case_no":"()执号","court":"中级人民法院","entry_id":"","legal_rep_name":"",'
    '"measures":["*"],"name":"有限责任公司股份有限公司有限公司","obligation":"","org_code":"",'
    '"published_at":"20-","related":[{"name":"","role":"legal_rep"},'
    '{"role":"actual_controller"},{"role":"principal"},{"role":"responsible_person"},'
    '{"role":"director"},{"role":"supervisor"},{"role":"senior_manager"}],'
    '"status":"active","subject_type":"entity","unperformed_amount":"","uscc":"91",'
    '"valid_until":"20-"}'
    # person skeleton: the most frequent shape, hence last (shortest distances)
    '{"case_no":"()执号","court":"人民法院","entry_id":"","measures":["*"],"name":"",'
    '"obligation":"","published_at":"20-","status":"active","subject_type":"person",'
    '"unperformed_amount":""}'
).encode()


def _deflate(plaintext: bytes) -> bytes:
    # Fixed Huffman codes: a record of a few hundred bytes compresses as small with them
    # (143.30 against 143.28 bytes on average, 20,000 benchmark records) and the reader
    # builds no code tables (inflate 1.18 against 1.48 us; decision 0020).
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_FIXED, _BODY_DICT)
    return c.compress(plaintext) + c.flush()


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj(-15, _BODY_DICT)
    try:
        out = d.decompress(data, MAX_PLAINTEXT)
    except zlib.error:
        raise FormatError("a sealed record body is not valid DEFLATE data") from None
    if not d.eof or d.unconsumed_tail or d.unused_data:
        raise FormatError("a sealed record body is truncated, too large or has trailing data")
    return out


IdentifierKind = Literal["id", "org"]

_KEK_LABEL: Final = b"intercept-sdk/v2 kek"
_RECORD_KEY_LABEL: Final = b"intercept-sdk/v2 record-key"
_WRAP_NONCE_LABEL: Final = b"intercept-sdk/v2 wrap-nonce"
_LOCATOR_LABEL: Final = b"intercept-sdk/v2 box-locator|"
_ZERO_NONCE: Final = bytes(12)
_RID_BYTES: Final = 16
_WRAP_BYTES: Final = 12 + 32 + 1 + 16  # nonce, record key, relation, GCM tag
_HEX_RE: Final = re.compile("[0-9a-f]*")


# -- the work factor ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkFactor:
    """How expensive it is to derive one identifier's key-encryption key.

    ``alg="hmac"`` (the default) costs one HMAC (about 1 µs): check() latency is as in
    format 1. ``alg="scrypt"`` costs ``2**log2_n`` scrypt iterations with block size ``r``
    (memory ``128 * r * 2**log2_n`` bytes); measured here: log2_n=14 about 36 ms,
    log2_n=17 (the maximum) about 0.3 s per identifier. The publisher pays it once per
    identifier per hash-key epoch, a client once per identifier that hits.
    """

    alg: Literal["hmac", "scrypt"] = "hmac"
    log2_n: int = 0
    r: int = 8
    p: int = 1

    MIN_LOG2_N: ClassVar[int] = 10
    MAX_LOG2_N: ClassVar[int] = 17

    def __post_init__(self) -> None:
        if self.alg == "hmac":
            if (self.log2_n, self.r, self.p) != (0, 8, 1):
                raise ConfigurationError("the hmac work factor takes no parameters")
            return
        if self.alg != "scrypt":
            raise ConfigurationError(f"unknown work factor algorithm {self.alg!r}")
        for name, value, low, high in (
            ("log2_n", self.log2_n, self.MIN_LOG2_N, self.MAX_LOG2_N),
            ("r", self.r, 1, 16),
            ("p", self.p, 1, 4),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigurationError(f"scrypt {name} must be an integer in {low}..{high}")

    @classmethod
    def maximum(cls) -> WorkFactor:
        """The largest work factor a manifest may ask for."""
        return cls("scrypt", cls.MAX_LOG2_N, 8, 1)

    def to_json(self) -> dict[str, Any]:
        if self.alg == "hmac":
            return {"alg": "hmac"}
        return {"alg": "scrypt", "log2_n": self.log2_n, "r": self.r, "p": self.p}

    @classmethod
    def from_json(cls, value: object) -> WorkFactor:
        """Parse the manifest's ``kdf`` object strictly (FormatError on anything else)."""
        if not isinstance(value, dict):
            raise FormatError("manifest kdf must be an object")
        alg = value.get("alg")
        allowed = {"alg"} if alg == "hmac" else {"alg", "log2_n", "r", "p"}
        if set(value) != allowed:
            raise FormatError(f"manifest kdf must have exactly the fields {sorted(allowed)}")
        try:
            if alg == "hmac":
                return cls()
            return cls("scrypt", value["log2_n"], value["r"], value["p"])
        except ConfigurationError as exc:
            raise FormatError(f"manifest kdf: {exc}") from None

    @classmethod
    def parse(cls, text: str) -> WorkFactor:
        """``"hmac"``, ``"scrypt"`` (log2_n 14) or ``"scrypt:LOG2N[:R[:P]]"`` (CLI form)."""
        parts = text.strip().split(":")
        if parts == ["hmac"]:
            return cls()
        if parts[0] != "scrypt" or len(parts) > 4:
            raise ConfigurationError(
                f"work factor {text!r}: expected hmac or scrypt[:log2n[:r[:p]]]"
            )
        try:
            nums = [int(x) for x in parts[1:]]
        except ValueError:
            raise ConfigurationError(f"work factor {text!r}: parameters must be integers") from None
        log2_n, r, p = ([*nums, *([14, 8, 1][len(nums) :])])[:3]
        return cls("scrypt", log2_n, r, p)


# -- identifiers ----------------------------------------------------------------------------


def identifier_secret(hash_key: bytes, kind: IdentifierKind, value: str) -> bytes:
    """``HMAC-SHA256(hash_key, kind ":" value)``: the 32-byte secret of one identifier.

    ``value`` is the normalised identifier (18-character ID number, 9-character
    organisation code). Its first :data:`TAG_BYTES` are the public lookup :func:`tag`;
    the whole is the input of :func:`kek`. Format 1's ``identifier_key`` was its first 16
    bytes, published.
    """
    return identifier_key(hash_key, kind, value)


def tag(secret: bytes) -> int:
    """The lookup tag of an identifier secret: its first 4 bytes as an unsigned integer."""
    return int.from_bytes(secret[:TAG_BYTES], "big")


def kek(secret: bytes, work: WorkFactor) -> bytes:
    """The key-encryption key of an identifier secret under ``work`` (32 bytes)."""
    if work.alg == "hmac":
        return hmac_sha256(secret, _KEK_LABEL)  # = hmac.digest(secret, label, "sha256")
    return Scrypt(salt=_KEK_LABEL, length=32, n=1 << work.log2_n, r=work.r, p=work.p).derive(secret)


def kek_function(work: WorkFactor) -> Callable[[bytes], bytes]:
    """``lambda secret: kek(secret, work)``, as cheap to call as the work factor allows
    (for the default one, a ``functools.partial`` of :func:`hmac_sha256`: no Python frame
    of its own on check()'s hit path)."""
    if work.alg == "hmac":
        return functools.partial(hmac_sha256, message=_KEK_LABEL)
    return functools.partial(kek, work=work)


def record_id(hash_key: bytes, entry_id: str) -> bytes:
    """The pseudonymous id of an entry within one hash-key epoch (16 bytes).

    Deltas name records by it; without the hash key it links to nothing.
    """
    return hmac.digest(hash_key, f"entry:{entry_id}".encode(), "sha256")[:_RID_BYTES]


# -- sealing ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _record_key(hash_key: bytes, rid: bytes, plaintext: bytes) -> bytes:
    return hmac.digest(
        hash_key, _RECORD_KEY_LABEL + rid + hashlib.sha256(plaintext).digest(), "sha256"
    )


def _wrap_nonce(record_key: bytes, relation: int) -> bytes:
    return hmac.digest(record_key, _WRAP_NONCE_LABEL + bytes((relation,)), "sha256")[:12]


def seal_record(
    hash_key: bytes,
    entry_id: str,
    plaintext: bytes,
    keks: Iterable[tuple[bytes, bytes, int]],
) -> bytes:
    """One sealed record line (canonical JSON, no newline).

    ``keks`` are ``(identifier secret, its kek, relation index)`` for every identifier
    that must open the record (the caller derives them, usually through a cache: a
    person listed in several entries pays the work factor once). The line is
    ``{"b": body, "r": rid hex, "w": [[tag hex, wrap], ...]}`` with base64 values and the
    wraps sorted, so the output depends only on the inputs.
    """
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"a record's plaintext is larger than {MAX_PLAINTEXT} bytes")
    rid = record_id(hash_key, entry_id)
    record_key = _record_key(hash_key, rid, plaintext)
    body = AESGCM(record_key).encrypt(_ZERO_NONCE, _deflate(plaintext), rid)
    wraps = []
    seen: set[tuple[bytes, int]] = set()
    for secret, key, relation in keks:
        if not 0 <= relation <= 255:
            raise ValueError("relation index out of range")
        if (secret, relation) in seen:
            continue
        seen.add((secret, relation))
        t = secret[:TAG_BYTES]
        nonce = _wrap_nonce(record_key, relation)
        blob = nonce + AESGCM(key).encrypt(nonce, record_key + bytes((relation,)), rid + t)
        wraps.append([t.hex(), _b64(blob)])
    if not wraps or len(wraps) > MAX_WRAPS:
        raise ValueError(f"a record needs 1..{MAX_WRAPS} identifiers, got {len(wraps)}")
    wraps.sort()
    line = {"b": _b64(body), "r": rid.hex(), "w": wraps}
    return json.dumps(line, separators=(",", ":"), sort_keys=True).encode("ascii")


@dataclass(frozen=True)
class SealedRecord:
    """A parsed sealed line: ``rid`` (16 bytes), ``wraps`` ((tag, blob), ...), ``body``."""

    rid: bytes
    wraps: tuple[tuple[int, bytes], ...]
    body: bytes


def _strict_b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"sealed record: {what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise FormatError(f"sealed record: {what} is not strict base64") from None


def _strict_hex(text: object, size: int, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * size or not _HEX_RE.fullmatch(text):
        raise FormatError(f"sealed record: {what} must be {2 * size} lower-case hex digits")
    return bytes.fromhex(text)


def parse_sealed(line: bytes | str) -> SealedRecord:
    """Parse one sealed line strictly: exact fields, sizes and encodings, or FormatError."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise FormatError("sealed record is not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"b", "r", "w"}:
        raise FormatError('sealed record must have exactly the fields "b", "r", "w"')
    rid = _strict_hex(obj["r"], _RID_BYTES, "r")
    body = _strict_b64(obj["b"], "b")
    if not 16 <= len(body) <= MAX_BODY:
        raise FormatError("sealed record: body size out of range")
    raw_wraps = obj["w"]
    if not isinstance(raw_wraps, list) or not 1 <= len(raw_wraps) <= MAX_WRAPS:
        raise FormatError(f"sealed record: w must be a list of 1..{MAX_WRAPS} wraps")
    wraps = []
    for item in raw_wraps:
        if not isinstance(item, list) or len(item) != 2:
            raise FormatError("sealed record: each wrap must be [tag, blob]")
        t = _strict_hex(item[0], TAG_BYTES, "wrap tag")
        blob = _strict_b64(item[1], "wrap")
        if len(blob) != _WRAP_BYTES:
            raise FormatError("sealed record: wrap has the wrong size")
        wraps.append((int.from_bytes(t, "big"), blob))
    return SealedRecord(rid, tuple(wraps), body)


# The canonical layout of a sealed line (what :func:`seal_record` writes: sorted keys, no
# spaces) has fixed offsets once the body's end is found:
#   {"b":"<body b64>","r":"<32 hex>","w":[<wrap>,<wrap>,...]}
# where each <wrap> is ["<8 hex>","<84 b64 chars: 61 bytes>"], 99 bytes, so the wraps
# start at a fixed offset and sit at a stride of 100. A lookup that hits finds its own
# tag's wraps with ``bytes.find`` and decodes only those (about 3 us less than a regex
# over the line, 6 us less than :func:`parse_sealed`).
_WRAP_TEXT: Final = 99  # ["tttttttt","<84>"]
_WRAP_STRIDE: Final = _WRAP_TEXT + 1  # and a comma
_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _frame(line: bytes) -> tuple[int, int, int] | None:
    """``(end of the body, start of the wraps, number of wraps)`` of a line laid out as a
    canonical one is (the contents are not checked here), else ``None``."""
    e = line.find(b'"', 6)
    start = e + 46  # "," r":" 32 hex "," w":[
    n_text = len(line) - start - 2  # the wraps and their commas, without the final ]}
    if (
        e < 7
        or not line.startswith(b'{"b":"')
        or line[e : e + 7] != b'","r":"'
        or line[e + 39 : start] != b'","w":['
        or line[-2:] != b"]}"
        or (n_text + 1) % _WRAP_STRIDE
        or not 1 <= (n_text + 1) // _WRAP_STRIDE <= MAX_WRAPS
    ):
        return None
    return e, start, (n_text + 1) // _WRAP_STRIDE


def _canonical_wraps(line: bytes, tag_value: int) -> tuple[bytes, bytes, list[bytes]] | None:
    """:func:`wraps_of` for a line of exactly the canonical layout, else ``None``."""
    frame = _frame(line)
    if frame is None:
        return None
    e, start, _n = frame
    want = b'["%08x","' % tag_value
    blobs: list[bytes] = []
    a2b = binascii.a2b_base64
    try:
        i = line.find(want, start)
        while i >= 0:
            if (i - start) % _WRAP_STRIDE == 0:
                text = line[i + 13 : i + 97]
                # a2b_base64 skips bytes outside the alphabet: refuse them first
                if text.translate(None, _B64_ALPHABET) or line[i + 97 : i + 100] not in (
                    b'"],',
                    b'"]]',
                ):
                    return None
                blob = a2b(text)
                if len(blob) != _WRAP_BYTES:
                    return None
                blobs.append(blob)
            i = line.find(want, i + 1)
        text = line[6:e]
        if text.translate(None, _B64_ALPHABET):
            return None
        body = a2b(text)
        rid_hex = line[e + 7 : e + 39]
        rid = binascii.unhexlify(rid_hex)
    except binascii.Error:
        return None
    if not 16 <= len(body) <= MAX_BODY or rid.hex().encode() != rid_hex:
        return None
    return rid, body, blobs


def wraps_of(line: bytes, tag_value: int) -> tuple[bytes, bytes, list[bytes]]:
    """``(rid, body, [wrap blob, ...])`` of the wraps of ``line`` tagged ``tag_value``.

    The fast path of a lookup: a line of exactly the canonical layout is read at fixed
    offsets; any other valid or invalid form is parsed by :func:`parse_sealed`, which
    gives the same answer or the precise FormatError.
    """
    got = _canonical_wraps(line, tag_value)
    if got is not None:
        return got
    rec = parse_sealed(line)
    return rec.rid, rec.body, [blob for t, blob in rec.wraps if t == tag_value]


# -- the packed form (a cache's local storage of a sealed line) -----------------------------
# A canonical line carries its bytes in base64 and hex: 4/3 of the binary, and every lookup
# that hits would decode them again. A cache keeps the binary instead,
#   rid (16) | number of wraps n (1) | n x (tag (4) | wrap (61)) | body
# in the line's wrap order, and rebuilds the exact line from it when the line itself is
# needed (digests, exports): :func:`pack_sealed` packs only a line that
# :func:`unpack_sealed` gives back byte for byte.
_PACKED_WRAP: Final = TAG_BYTES + _WRAP_BYTES
_PACKED_HEAD: Final = _RID_BYTES + 1


def pack_sealed(line: bytes) -> bytes | None:
    """The packed form of a canonical sealed ``line``, or ``None`` for any other line
    (non-canonical or malformed lines are kept as they are, and parsed strictly)."""
    frame = _frame(line)
    if frame is None:
        return None
    e, start, n = frame
    a2b = binascii.a2b_base64
    parts = [b"", bytes((n,))]
    try:
        parts[0] = binascii.unhexlify(line[e + 7 : e + 39])
        for i in range(start, start + n * _WRAP_STRIDE, _WRAP_STRIDE):
            if line[i : i + 2] != b'["' or line[i + 10 : i + 13] != b'","':
                return None
            parts.append(binascii.unhexlify(line[i + 2 : i + 10]))
            parts.append(a2b(line[i + 13 : i + 97]))
        parts.append(a2b(line[6:e]))
    except binascii.Error:
        return None
    packed = b"".join(parts)
    # only what rebuilds exactly (lower-case hex, canonical base64, the wrap sizes)
    if (
        len(packed) != _PACKED_HEAD + n * _PACKED_WRAP + len(parts[-1])
        or not 16 <= len(parts[-1]) <= MAX_BODY
        or unpack_sealed(packed) != line
    ):
        return None
    return packed


def unpack_sealed(packed: bytes) -> bytes:
    """The sealed line :func:`pack_sealed` packed (FormatError if ``packed`` is not one)."""
    if len(packed) < _PACKED_HEAD + _PACKED_WRAP + 16:
        raise FormatError("packed sealed record is too short")
    n = packed[_RID_BYTES]
    body_at = _PACKED_HEAD + n * _PACKED_WRAP
    if not 1 <= n <= MAX_WRAPS or len(packed) < body_at + 16:
        raise FormatError("packed sealed record has a bad wrap count")
    b2a = binascii.b2a_base64
    wraps = b",".join(
        b'["%s","%s"]'
        % (
            packed[i : i + TAG_BYTES].hex().encode(),
            b2a(packed[i + TAG_BYTES : i + _PACKED_WRAP], newline=False),
        )
        for i in range(_PACKED_HEAD, body_at, _PACKED_WRAP)
    )
    return b'{"b":"%s","r":"%s","w":[%s]}' % (
        b2a(packed[body_at:], newline=False),
        packed[:_RID_BYTES].hex().encode(),
        wraps,
    )


def open_packed(
    key: bytes, packed: bytes, tag_bytes: bytes
) -> tuple[bytes, bytes, list[int]] | None:
    """:func:`open_sealed` of a packed line (:func:`pack_sealed`), with the identifier's
    4-byte tag: its wraps are found at fixed offsets, nothing is decoded."""
    n = packed[_RID_BYTES] if len(packed) > _PACKED_HEAD else 0
    body_at = _PACKED_HEAD + n * _PACKED_WRAP
    if not 1 <= n <= MAX_WRAPS or not 16 <= len(packed) - body_at <= MAX_BODY:
        raise FormatError("packed sealed record is malformed")
    rid = packed[:_RID_BYTES]
    aad = rid + tag_bytes
    aead: AESGCM | None = None
    record_key: bytes | None = None
    relations: list[int] = []
    i = packed.find(tag_bytes, _PACKED_HEAD, body_at)
    while i >= 0:
        if (i - _PACKED_HEAD) % _PACKED_WRAP == 0:
            if aead is None:
                aead = AESGCM(key)
            at = i + TAG_BYTES
            try:
                plain = aead.decrypt(packed[at : at + 12], packed[at + 12 : at + _WRAP_BYTES], aad)
            except InvalidTag:
                pass
            else:
                record_key = plain[:32]
                relations.append(plain[32])
        i = packed.find(tag_bytes, i + 1, body_at)
    if record_key is None:
        return None
    try:
        data = AESGCM(record_key).decrypt(_ZERO_NONCE, packed[body_at:], rid)
    except InvalidTag:
        raise VerificationError("a sealed record body does not open with its record key") from None
    return rid, _inflate(data), relations


def open_sealed(key: bytes, line: bytes, tag_value: int) -> tuple[bytes, bytes, list[int]] | None:
    """``(rid, plaintext, [relation index, ...])`` of ``line`` opened with ``key`` (the
    :func:`kek` of an identifier whose tag is ``tag_value``), or ``None`` when no wrap of
    that tag opens with it (an identifier that only shares the 32-bit tag).

    One call for opening a line as published (:func:`wraps_of`, :func:`open_wrap` of each
    wrap, :func:`open_body`; a cache keeps canonical lines packed and opens those with
    :func:`open_packed`): FormatError for a malformed line or body, VerificationError
    when a wrap opens but the body does not.
    """
    rid, body, blobs = wraps_of(line, tag_value)
    record_key: bytes | None = None
    relations: list[int] = []
    aad = rid + tag_value.to_bytes(TAG_BYTES, "big")
    aead = AESGCM(key)
    for blob in blobs:
        try:
            plain = aead.decrypt(blob[:12], blob[12:], aad)
        except InvalidTag:
            continue
        record_key = plain[:32]
        relations.append(plain[32])
    if record_key is None:
        return None
    try:
        data = AESGCM(record_key).decrypt(_ZERO_NONCE, body, rid)
    except InvalidTag:
        raise VerificationError("a sealed record body does not open with its record key") from None
    return rid, _inflate(data), relations


def open_wrap(key: bytes, rid: bytes, tag_value: int, blob: bytes) -> tuple[bytes, int] | None:
    """``(record key, relation index)`` if ``key`` (a :func:`kek`) opens the wrap, else None.

    ``None`` is the normal outcome for an identifier that only shares the 32-bit tag.
    """
    if len(blob) != _WRAP_BYTES:
        return None
    try:
        plain = AESGCM(key).decrypt(
            blob[:12], blob[12:], rid + tag_value.to_bytes(TAG_BYTES, "big")
        )
    except InvalidTag:
        return None
    return plain[:32], plain[32]


def open_body(record_key: bytes, rid: bytes, body: bytes) -> bytes:
    """The plaintext record; VerificationError if the body does not open with the key,
    FormatError if what it holds does not inflate (within :data:`MAX_PLAINTEXT`)."""
    try:
        data = AESGCM(record_key).decrypt(_ZERO_NONCE, body, rid)
    except InvalidTag:
        raise VerificationError("a sealed record body does not open with its record key") from None
    return _inflate(data)


# -- boxes -----------------------------------------------------------------------------------


def box_locator(subscriber_id: str, restricted_public: bytes) -> str:
    """The opaque name of a subscriber's box (32 hex digits).

    Derived from the subscriber id and its raw X25519 public key, both of which the
    subscriber knows; a site reader who knows subscriber ids but not their keys cannot
    tell which box is whose.
    """
    if len(restricted_public) != 32:
        raise ValueError("expected a raw 32-byte X25519 public key")
    digest = hashlib.sha256(_LOCATOR_LABEL + subscriber_id.encode() + b"|" + restricted_public)
    return digest.hexdigest()[:32]


def box_context(locator: str, version: int) -> bytes:
    """The AEAD context of a box: binds it to its locator and list version."""
    return f"intercept-sdk/v2 box|{locator}|{version}".encode()


def padded_size(lengths: Sequence[int]) -> int:
    """The one size every box of a version is padded to (length prefix included)."""
    largest = max(lengths, default=0) + 4
    return -(-largest // BOX_PAD_QUANTUM) * BOX_PAD_QUANTUM


def pad(payload: bytes, size: int) -> bytes:
    """``len(payload)`` as 4 bytes big-endian, the payload, then zeros up to ``size``."""
    if len(payload) + 4 > size:
        raise ValueError("payload larger than the padded size")
    return len(payload).to_bytes(4, "big") + payload + bytes(size - 4 - len(payload))


def unpad(data: bytes) -> bytes:
    """Inverse of :func:`pad`; FormatError unless the padding is exactly zeros."""
    if len(data) < 4:
        raise FormatError("padded box too short")
    n = int.from_bytes(data[:4], "big")
    if n > len(data) - 4 or data[4 + n :].count(0) != len(data) - 4 - n:
        raise FormatError("padded box has a bad length or non-zero padding")
    return data[4 : 4 + n]


@dataclass(frozen=True)
class BoxContents:
    """What a subscriber's box holds for one version.

    ``hash_key`` opens the public records of this key epoch; ``restricted`` are the sealed
    lines of the restricted entries addressed to this subscriber (in record id order, as
    a snapshot's lines are), with
    ``restricted_sha256`` the SHA-256 of ``line + "\\n"`` over them in that order.
    """

    version: int
    key_epoch: int
    hash_key: bytes
    restricted: tuple[bytes, ...]
    restricted_sha256: str


def lines_sha256(lines: Iterable[bytes]) -> str:
    """SHA-256 of ``line + "\\n"`` for each line, in order (hex)."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line)
        h.update(b"\n")
    return h.hexdigest()


def box_payload(
    version: int, key_epoch: int, hash_key: bytes, restricted: Iterable[bytes]
) -> bytes:
    """The plaintext of a box (before :func:`pad` and sealing): a header line, then lines."""
    lines = sorted(restricted, key=lambda line: parse_sealed(line).rid)
    header = {
        "hash_key": hash_key.hex(),
        "key_epoch": key_epoch,
        "restricted": {"entries": len(lines), "sha256": lines_sha256(lines)},
        "spec": SITE_SPEC,
        "type": "box",
        "version": version,
    }
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("ascii")
    return b"\n".join([head, *lines]) + b"\n"


def parse_box_payload(payload: bytes, *, version: int) -> BoxContents:
    """Parse :func:`box_payload` strictly and check it is for ``version`` (FormatError)."""
    if not payload.endswith(b"\n"):
        raise FormatError("box payload must end with a newline")
    head, *lines = payload[:-1].split(b"\n")
    try:
        header = json.loads(head)
    except ValueError:
        raise FormatError("box header is not JSON") from None
    fields = {"hash_key", "key_epoch", "restricted", "spec", "type", "version"}
    if not isinstance(header, dict) or set(header) != fields:
        raise FormatError(f"box header must have exactly the fields {sorted(fields)}")
    if header["type"] != "box" or header["spec"] != SITE_SPEC:
        raise FormatError(f"box is not of site format {SITE_SPEC}")
    if header["version"] != version or isinstance(header["version"], bool):
        raise FormatError(f"box is for version {header['version']!r}, expected {version}")
    epoch = header["key_epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise FormatError("box key_epoch must be a positive integer")
    hash_key = _strict_hex(header["hash_key"], 32, "box hash_key")
    restricted = header["restricted"]
    if not isinstance(restricted, dict) or set(restricted) != {"entries", "sha256"}:
        raise FormatError('box restricted must have exactly the fields "entries", "sha256"')
    if restricted["entries"] != len(lines):
        raise FormatError("box restricted lines do not match their count")
    rids = [parse_sealed(line).rid for line in lines]
    if any(a >= b for a, b in itertools.pairwise(rids)):
        raise FormatError("box restricted lines are not in strictly increasing record id order")
    digest = lines_sha256(lines)
    if restricted["sha256"] != digest:
        raise FormatError("box restricted lines do not match their digest")
    return BoxContents(version, epoch, hash_key, tuple(lines), digest)
