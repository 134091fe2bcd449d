"""Why a figure misses its target, and what would close it (the table's closing note).

Written from profiles (cProfile, at the stated sizes) of the code at :data:`ANALYSED_AT`.
The renderer prints an entry only for a row that actually missed in the run, so a fixed
figure drops out by itself; an entry whose figure is fixed should then be deleted. Keys
are row ids or row-id prefixes (``check_hit`` covers p50 and p99).
"""

ANALYSED_AT = "2026-11-22, commit 453d7b2 plus the working tree of that day"

ANALYSIS: dict[str, str] = {
    "check_hit_p50": (
        "CPU work per hit, not I/O: the sqlite3 statement is ~8 % of a check(). Profile of "
        "1,436 hits on a 50k list: `_store.Store.lookup` 42 %, of which `_Codec.decode` "
        "22 % (the `_UNMARK_RE` regex rebuilding the id_key/org_key hex, GB18030 → UTF-8 "
        "transcoding, inflate 4 %); `_decisions.decide` 36 %, mostly parsing the record's "
        "JSON again (`_decisions._record`, pydantic_core) and building the record view; "
        "keys and probes 7 %. The exact signed bytes are rebuilt only to be parsed again. "
        "To close it (about half of today's CPU per hit): let the check path decode a body "
        "straight into the few fields `decide` reads (one pass over the marked-up GB18030 "
        "body, no hex re-insertion, no second JSON parse), keeping the exact-bytes "
        "reconstruction of `_Codec.decode` for `verify`/`get_records`/`screen` callers that "
        "need the signed record."
    ),
    "check_hit_p99": (
        "waiting for a core, not work. This row follows the machine's load: at load ~5 on "
        "the 2 cores (other engineers' test suites) it missed (86×, p99 12 ms), in a run at "
        "load ~2.8 it met (8.4×, p99 0.6 ms) with the same code; when it misses, the CPU "
        "time of the calling thread at p99 (notes) is a fraction of the wall time. A 150 µs call "
        "is preempted several times more often than a 20 µs SELECT, so its p99 catches the "
        "scheduler's millisecond time slices while the baseline's p99 mostly does not. The "
        "audit thread is not the cause: the same 3,000-hit test gave p99 8.6 ms with the "
        "audit log on and 8.5 ms with `audit=False`. To close it: measure on an otherwise "
        "idle machine (the harness records the load average at start, end and per row); "
        "in the code the only lever is a shorter check() (see the p50 note), because the "
        "tail grows with the length of the call."
    ),
    "check_miss_p99": (
        "same as the hit p99: preemption on an overloaded 2-core machine (CPU-time p99 in "
        "the notes), amplified because a check() is 2-3× longer than the SELECT it wraps; "
        "at load ~2.8 this row met (1.45×)."
    ),
    "screen": (
        "per-subject Python work in `_client._Core._screen_batch`, not SQL. Profile of "
        "20,000 misses: key derivation (`_decisions.probes_for` → `_key`, HMAC) 45 %, one "
        "`allow_decision()` Decision object per subject 12 %, `_after_decision` → "
        "`AuditLog.record` (a dict per subject) 14 %, the batch's own loop 12 %, the "
        "batched SQL only 9 %. On this loaded machine the baseline itself (the same keys, "
        "batched IN lookups) stayed below 100,000 keys/s (baseline column), so the absolute "
        "target cannot be judged here; the relative one (≥ 0.5× baseline) is missed by "
        "2.4-2.8× (two runs). To close the relative target: in `_Core._screen_batch`, derive the "
        "keys of plain Person/Entity subjects without building Probe objects, return one "
        "shared (frozen) allow Decision per batch for subjects without a hit, and log the "
        "batch with one audit call (an `AuditLog.record_many`) instead of one dict per "
        "subject; these account for ~70 % of the profiled time."
    ),
    "sync_full": (
        "CPU per record in `_store.Store._build`, on one core: the download is under 1 % of "
        "the time (notes), verify + apply the rest. Profile of a 50,000-record build: "
        "`_Codec.encode` 47 % (raw deflate of each body with the 16 KiB preset dictionary: "
        "`compressobj.copy()` + `compress` + `flush` ≈ 62 µs per record, plus GB18030 "
        "transcoding and key markup in `_transform` ≈ 25 µs), `_parse_record` 22 % (a full "
        "JSON parse of every record only for entry_id, keys and visibility), gunzip and "
        "line splitting (`_sync._iter_lines`) 10 %, digests 7 %, inserts 5 %. The store "
        "spends 9-10× the baseline's time per row in both runs (12-31 µs per row for the "
        "baseline, depending on load); reaching ≤ 4× needs both of these: (1) one pass per "
        "record: take "
        "entry_id and the identifier keys from the `_transform` markup pass, which already "
        "finds every id_key/org_key, instead of `_parse_record`'s JSON parse; (2) take body "
        "compression off the single inserting thread: encode in a second process (the build "
        "uses one of the two cores) or use a compressor with a reusable prepared dictionary "
        "(deflate copies its dictionary state per record; zstd's CDict does not). Deflate "
        "level 1 is no way out: measured −25 % encode time but +29 % body bytes (169 instead "
        "of 131 B), which would push the cache past 250 B/entry."
    ),
    "sync_full_rss": (
        "`_store.Store._build` gives the build connection `PRAGMA cache_size = -131072` "
        "(128 MiB), and a 1M-entry build (a 208 MB file) fills it: ~56 MB for the "
        "interpreter, imports and Client(), ~134 MB of SQLite page cache, the rest the "
        "sorted key staging (`temp.stage`) and the 5,000-row insert batches. Measured with "
        "the same 1M site and only that pragma changed to 32 MiB: peak RSS 136 MB instead "
        "of 267 MB, sync time 154 s instead of 150 s (noise). To close it: a smaller build "
        "cache in `Store._build` (records are appended in rid order and the key index is "
        "inserted sorted, so a large cache buys nothing measurable)."
    ),
    "sync_large_rss": (
        "see the 1M peak RSS: the build's 128 MiB SQLite page cache (`Store._build`) is "
        "filled by any list above ~600,000 entries."
    ),
    "enqueue": (
        "the SDK's own CPU per report, visible when the disk flushes fast: the row met "
        "(0.55-0.61×) in runs where an fdatasync took ~1-3 ms and dominated both sides, and "
        "missed (0.24×) in a quiet run where the raw insert took 0.23 ms. The CPU of the "
        "calling thread per report is in the notes (~1 ms vs ~0.2 ms per raw insert). CPU "
        "profile of 500 `Client.report` calls: the payload is validated twice "
        "(`_reports.build_report` and again in `sign_report`: ~1/3 of the CPU, much of it "
        "the plaintext-ID scan `_looks_like_id_number` over every string), "
        "`_signing.sign_envelope` recomputes the key id (SHA-256 of the public key) for "
        "every report, and `_outbox.Outbox.enqueue` re-parses the envelope it was just "
        "handed (`_check_envelope`, ~10 %) before two B-tree inserts and a page-count "
        "check. To close it: validate once on the `Client.report_raw` path, cache the key "
        "id in `SigningKey`, and let `Outbox.enqueue` trust envelopes made in-process "
        "(keep the check for external callers) — together about a third of the CPU."
    ),
    "upload": (
        "the reference platform's report ingest is CPU-bound on Ed25519 verification: "
        "cryptography's `Ed25519PublicKey.verify` is 84 % of `_platform._Platform._ingest` "
        "(profile of 2,500 reports), ~500-760 µs per signature on this loaded machine (the "
        "platform's CPU per report is in the notes). The raw ingest without the SDK hits the "
        "same ceiling (baseline column) and the Sender gets most of it, so the SDK side is "
        "not the limit. To close it: (1) install "
        "PyNaCl, which `_platform` already uses when importable (`VERIFY_BACKEND`): measured "
        "here 271-366 µs instead of 503-625 µs per verify (1.7-1.9×); (2) verify on both "
        "cores: `_Platform._verify_batch` in a process pool, or several server processes "
        "sharing the report store. Independently, the Client's default `report_rate` "
        "(2,000/s, its own row) caps how fast a backlog drains."
    ),
}

RUNTIME = (
    "The done criterion (a full run within 20 minutes on 2 cores) cannot be met on this "
    "machine while the SDK's own costs are what they are: the harness must publish the 1M "
    "list twice (first version and the 1 % change; `_site.publish` validates and hashes "
    "every entry, ~1,200-3,300 entries/s here: 5-14 min each) and sync it once (5 min), "
    "and the 10M sync alone runs at the same per-record rate as the 1M one (~50 min "
    "extrapolated). The 10M site is published once and cached (`--prepare-only`), so its "
    "publish is not counted. The fixes named above for the full sync (`Store._build`) "
    "shorten the run most; the publisher's cost is in `_models.parse_entry` (~50 % of a "
    "publish: pydantic validation and identifier checks) and `_site.public_record` (~28 %)."
)
