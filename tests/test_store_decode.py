"""The zstd one-shot decode path (libzstd through ctypes, one context per thread) decodes
every body exactly as the Python API does, and refuses the same corrupt bodies."""

from __future__ import annotations

import json
import os
import random
import threading

import pytest

import intercept_sdk._client.store as S
from intercept_sdk._client.store import _Codec
from intercept_sdk._exceptions import StoreCorrupted

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[no-redef,unused-ignore]


COURTS = ["唐山市路南区人民法院", "北京市第一中级人民法院", "上海市浦东新区人民法院"]


def record(i: int, **extra: object) -> bytes:
    rng = random.Random(i)
    obj: dict[str, object] = {
        "entry_id": f"E{i:06d}",
        "case_no": f"(20{rng.randint(10, 25)})冀0203执{rng.randint(1, 9999)}号",
        "court": rng.choice(COURTS),
        "id_key": os.urandom(16).hex(),
        "id_masked": f"1302**********{rng.randint(1000, 9999)}",
        "measures": ["*"],
        "name": rng.choice(["张伟", "王芳", "李娜"]) + str(i),
        "obligation": "被执行人应支付申请执行人货款" + str(rng.randint(1, 10**7)) + "元",
        "published_at": f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
        "status": "active",
        "subject_type": "person",
        "unperformed_amount": str(rng.randint(1, 10**7)),
        **extra,
    }
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


RECORDS = [record(i) for i in range(1200)]


def eid(r: bytes) -> str:
    return str(json.loads(r)["entry_id"])


@pytest.fixture(params=["trained", "raw"])
def codec(request: pytest.FixtureRequest) -> _Codec:
    c = _Codec.train(RECORDS if request.param == "trained" else RECORDS[:20])
    assert c.trained == (request.param == "trained")
    return c


def object_decode(c: _Codec, body: bytes, entry_id: str) -> bytes:
    """What decode gave before the one-shot path (the Python API only)."""
    try:
        out = c._inflate_object(body)
    except zstd.ZstdError:
        raise StoreCorrupted("cannot be decoded") from None
    if body[0] == 3:
        out = out.replace(b"\x03", b'"entry_id":"' + entry_id.encode("ascii") + b'",')
    return out


def outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except StoreCorrupted:
        return StoreCorrupted


def test_the_one_shot_path_is_used_here(codec: _Codec) -> None:
    assert S._zstd_lib() is not None  # backports.zstd / the stdlib module export libzstd
    codec.decode(codec.encode(RECORDS[0], eid(RECORDS[0])), eid(RECORDS[0]))
    assert codec._native is not None


def test_one_shot_decode_equals_the_object_path(codec: _Codec) -> None:
    bodies = [(codec.encode(r, eid(r)), eid(r), r) for r in RECORDS[:300]]
    for body, e, r in bodies:
        assert codec.decode(body, e) == object_decode(codec, body, e) == r
    big = record(5, obligation="货款" * 40_000)  # past the reused 16 KiB output buffer
    assert codec.decode(codec.encode(big, "E000005"), "E000005") == big
    assert codec.decode(bodies[0][0], bodies[0][1]) == bodies[0][2]  # buffer grown, reused


def test_corrupt_bodies_are_refused_alike(codec: _Codec) -> None:
    """Every single-bit flip, truncation and appended data: the one-shot path and the
    Python API give the same bytes or both StoreCorrupted."""
    r = record(7, note=random.Random(1).randbytes(60).hex())  # a body of ~130 bytes
    e = eid(r)
    body = codec.encode(r, e)
    assert body[0] == 3 and len(body) > 100
    cases = [body[:n] for n in range(len(body))]
    cases += [body + b"x", body + b"\x00" * 8, body + body[1:]]
    empty = zstd.ZstdCompressor().compress(b"", zstd.ZstdCompressor.FLUSH_FRAME)
    skippable = b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd"
    cases += [body + empty, body + skippable, b"\x03" + skippable, b"\x03" + empty]
    for i in range(1, len(body)):
        for bit in range(8):
            cases.append(body[:i] + bytes((body[i] ^ (1 << bit),)) + body[i + 1 :])
    assert len(cases) > 800
    for bad in cases:
        if not bad:
            continue
        assert outcome(codec.decode, bad, e) == outcome(object_decode, codec, bad, e), bad


def test_frames_without_a_content_size_and_oversized_ones(codec: _Codec) -> None:
    r = RECORDS[3]
    zd = zstd.ZstdDict(codec.zdict, is_raw=not codec.trained)
    comp = zstd.ZstdCompressor(zstd_dict=zd)
    streamed = comp.compress(r) + comp.flush()  # no content size in the header
    assert zstd.get_frame_info(streamed).decompressed_size is None
    body = b"\x04" + streamed
    assert codec.decode(body, "E000003") == r  # through the object path
    huge = b"\x04" + zstd.compress(b"{" * (S._MAX_RECORD + 1))
    for bad in (huge, huge[:-1]):
        with pytest.raises(StoreCorrupted):
            codec.decode(bad, "E1")


def test_threads_decode_with_their_own_contexts(codec: _Codec) -> None:
    bodies = [(codec.encode(r, eid(r)), eid(r), r) for r in RECORDS[:200]]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                for body, e, r in bodies:
                    assert codec.decode(body, e) == r
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_decodes(codec: _Codec) -> None:
    r = RECORDS[1]
    body = codec.encode(r, eid(r))
    assert codec.decode(body, eid(r)) == r  # the parent's context exists before the fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = all(codec.decode(codec.encode(x, eid(x)), eid(x)) == x for x in RECORDS[:50])
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_without_the_library_decode_uses_the_python_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "_ZLIB", [None])
    c = _Codec.train(RECORDS)
    r = RECORDS[9]
    body = c.encode(r, eid(r))
    assert c.decode(body, eid(r)) == r
    assert c._native is None
    with pytest.raises(StoreCorrupted):
        c.decode(body[:-2], eid(r))


def test_a_library_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = S._zstd_lib()
    if lib is None:  # pragma: no cover - no one-shot path on this platform
        pytest.skip("no one-shot path here")
    monkeypatch.setattr(S._NativeDict, "decompress", lambda self, body: b"wrong")
    c = _Codec.train(RECORDS)
    r = RECORDS[2]
    assert c.decode(c.encode(r, eid(r)), eid(r)) == r
    assert c._native is None
