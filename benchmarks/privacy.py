"""What a thief of a subscriber cache *with the leaked key* pays to recover ID numbers.

Site format 2 (decision 0011) leaves an attacker who holds a unit's cache and its X25519
key file (so the hash key inside the box) one way in: guess ID numbers. Each guess costs
one HMAC (its secret, whose 4-byte tag is looked up in the cache's tag set); a guess whose
tag is present (a listed identifier, or one of the ~tags/2**32 of the others sharing a
tag) also costs one KEK derivation under the manifest's work factor and one AES-GCM open.
No record narrows the guess: the plaintext carries no masked ID, age or gender.

Measured here, on this machine, for the default (``hmac``) and the maximum (``scrypt``
log2_n=17, r=8) work factor:

* the cost of one guess that misses (secret + tag probe), and of one KEK + open;
* the expected cost per guess over the whole space, ``t_guess + p_tag * t_kek``, with
  ``p_tag`` the share of the 2**32 tags a list of the configured size fills;
* the space: 3,500 area codes (the county-level divisions of GB/T 2260, current and
  historical, rounded up) x 36,525 birth dates (100 years) x 1,000 sequence numbers (the
  check digit follows); the sweep of the whole space, and that divided by the listed
  persons it finds (the cost per recovered ID).

A sanity sweep then recovers one listed person from a window of 1,000 guesses (the true
area and birth date, every sequence number) with each work factor, so the figures are
the cost of a recovery that works, not of a loop that finds nothing.
"""

from __future__ import annotations

import hmac
import random
import time

from intercept_sdk._protocol import sealing
from intercept_sdk._protocol.identifiers import id_check
from intercept_sdk.testing.synth import generate_entries, valid_id_number

from .harness import Context, fmt_num, log

AREAS = 3_500
DAYS = 36_525
SEQUENCES = 1_000
SPACE = AREAS * DAYS * SEQUENCES
CPU_YEAR_S = 365.25 * 86400


def _guess_cost(hash_key: bytes, tags: set[bytes], n: int) -> float:
    """Seconds per guess that misses: the identifier's secret and a tag probe."""
    rng = random.Random(7)
    guesses = [valid_id_number(rng) for _ in range(n)]
    digest = hmac.digest
    t0 = time.perf_counter()
    found = 0
    for g in guesses:
        if digest(hash_key, b"id:" + g.encode(), "sha256")[:4] in tags:
            found += 1
    return (time.perf_counter() - t0) / n


def _kek_cost(work: sealing.WorkFactor, rounds: int) -> float:
    """Seconds per KEK derivation plus one wrap open attempt under ``work``."""
    rid = bytes(16)
    blob = bytes(61)
    t0 = time.perf_counter()
    for i in range(rounds):
        key = sealing.kek(i.to_bytes(32, "big"), work)
        sealing.open_wrap(key, rid, 0, blob)
    return (time.perf_counter() - t0) / rounds


def _sanity_sweep(work: sealing.WorkFactor) -> tuple[bool, float]:
    """Recover one sealed person from 1,000 guesses with the leaked key; (found, s)."""
    rng = random.Random(3)
    hash_key = rng.randbytes(32)
    true_id = valid_id_number(rng)
    secret = sealing.identifier_secret(hash_key, "id", true_id)
    line = sealing.seal_record(
        hash_key, "E1", b'{"entry_id":"E1"}', [(secret, sealing.kek(secret, work), 0)]
    )
    rec = sealing.parse_sealed(line)
    t0 = time.perf_counter()
    prefix = true_id[:14]
    for seq in range(SEQUENCES):
        body = f"{prefix}{seq:03d}"
        guess = body + id_check(body)
        s = sealing.identifier_secret(hash_key, "id", guess)
        t = sealing.tag(s)
        for wt, blob in rec.wraps:
            if wt == t and sealing.open_wrap(sealing.kek(s, work), rec.rid, wt, blob):
                return guess == true_id, time.perf_counter() - t0
    return False, time.perf_counter() - t0


def _mix(sample: int = 20_000) -> tuple[float, float]:
    """Identifiers and distinct persons per entry of the synthetic list (measured)."""
    ids: set[str] = set()
    people: set[str] = set()
    for e in generate_entries(sample, seed=1):
        if e.get("id_number"):
            ids.add("id:" + e["id_number"])
            people.add(e["id_number"])
        if e.get("uscc") or e.get("org_code"):
            ids.add("org:" + (e.get("org_code") or e["uscc"][8:17]))
        for r in e.get("related", []):
            if r.get("id_number"):
                ids.add("id:" + r["id_number"])
                people.add(r["id_number"])
    return len(ids) / sample, len(people) / sample


def privacy(ctx: Context) -> None:
    n = ctx.sizes.entries
    per_entry, persons_per_entry = _mix()
    identifiers = int(n * per_entry)  # debtors, organisation codes and officers
    persons = int(n * persons_per_entry)
    rng = random.Random(5)
    hash_key = rng.randbytes(32)
    tags = {rng.randbytes(4) for _ in range(min(identifiers, 200_000))}
    p_tag = identifiers / 2**32
    log(f"privacy: guess cost over {min(identifiers, 200_000):,} tags")
    t_guess = _guess_cost(hash_key, tags, 200_000)
    for name, work, rounds in (
        ("default", sealing.WorkFactor(), 20_000),
        ("max", sealing.WorkFactor.maximum(), 3),
    ):
        t_kek = _kek_cost(work, rounds)
        per_guess = t_guess + p_tag * t_kek
        sweep = SPACE * per_guess
        per_id = sweep / persons
        ok, sanity_s = _sanity_sweep(work)
        log(
            f"privacy {name}: guess {t_guess * 1e6:.2f} µs, kek+open {t_kek * 1e3:.3f} ms, "
            f"sweep {sweep / CPU_YEAR_S:.2f} CPU-years, per ID {per_id:.1f} s; "
            f"sanity recovery {'ok' if ok else 'FAILED'} in {sanity_s:.2f} s"
        )
        ctx.row(
            f"privacy_sweep_{name}",
            per_id,
            met=ok,
            baseline=None,
            notes=(
                f"work factor {work.to_json()}: one guess {t_guess * 1e6:.2f} µs (HMAC + tag "
                f"probe), one KEK + open {fmt_num(t_kek * 1e3, 'ms')}, {p_tag:.2e} of "
                f"guesses hit a tag ({identifiers:,} identifiers of a {n:,}-entry list); "
                f"space {SPACE:.2e} guesses ({AREAS:,} areas x {DAYS:,} days x {SEQUENCES:,}); "
                f"whole sweep {sweep / 3600:,.0f} CPU-hours = {sweep / CPU_YEAR_S:.2f} "
                f"CPU-years, recovering ~{persons:,} persons; sanity: one person recovered "
                f"from a 1,000-guess window in {sanity_s:.2f} s ({'ok' if ok else 'FAILED'})"
            ),
            guess_us=t_guess * 1e6,
            kek_ms=t_kek * 1e3,
            p_tag=p_tag,
            sweep_cpu_years=sweep / CPU_YEAR_S,
            sanity_recovered=ok,
        )
