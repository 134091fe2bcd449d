"""Why a figure misses its target, and what would close it (the table's closing note).

Written from profiles (cProfile, at the stated sizes) of the code at :data:`ANALYSED_AT`.
The renderer prints an entry only for a row that actually missed in the run, so a fixed
figure drops out by itself; an entry whose figure is fixed should then be deleted. Keys
are row ids or row-id prefixes (``check_hit`` covers p50 and p99).
"""

ANALYSED_AT = "2026-11-22 (commits 453d7b2 to 9414503 plus the working tree of that day)"

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
        "batched SQL only 9 %. On this machine the baseline itself (the same keys, batched "
        "IN lookups) reached only 50,000-100,000 keys/s depending on load (~120,000 per CPU "
        "second), so 100,000 subjects/s would need screen() to run as fast as raw sqlite3; "
        "the relative target (≥ 0.5× baseline) is missed by 2.4-2.8× in three runs (CPU per "
        "subject ~4.8× the baseline's per key, notes). To close the relative target: in "
        "`_Core._screen_batch`, derive the "
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
        "spends 9-11× the baseline's time per row in three runs (9-31 µs per row for the "
        "baseline, depending on load; 8.3× at 10M); reaching ≤ 4× needs both of these: "
        "(1) one pass per "
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
        "the same 128 MiB build cache as at 1M (`Store._build`: `PRAGMA cache_size = "
        "-131072`), plus SQLite's sorter for the final `INSERT INTO keys ... SELECT ... FROM "
        "temp.stage ORDER BY k, rid, rel`: with ~13M staged keys (~400 MB) the sort no "
        "longer fits and SQLite gives the sorter up to another cache_size of memory before "
        "spilling to temporary files (1M: the staged keys fit, 270 MB; 10M: 349 MB). To "
        "close it: the smaller build cache named for the 1M row bounds both (measured at 1M: "
        "136 MB with 32 MiB; at 10M expected well under 300 MB, not measured)."
    ),
    "enqueue": (
        "the signed report's own CPU against a disk that flushes in ~60 µs. In the quiet full "
        "run of 2026-11-22 the raw insert took 0.13 ms (median; 0.07 ms of it CPU) and "
        "`Client.report` 0.32 ms (0.26 ms CPU): the wait for the disk is the same on both "
        "sides, the difference is work. Per report, thread CPU measured alternately on the "
        "same machine: the Ed25519 signature itself 44-47 µs (libsodium; cryptography's "
        "OpenSSL signer 66 µs), `_reports.build_report` with its validation 35 µs (of it "
        "canonical JSON 10 µs), and the outbox transaction (`_outbox.Outbox.enqueue`: BEGIN "
        "IMMEDIATE, `PRAGMA data_version` for the cap, the envelope row and the journal row, "
        "COMMIT) 113 µs against 73 µs for the raw autocommit insert. So even a free "
        "validation would leave signature + insert at ~0.17 ms, 0.74× at best here; with a "
        "flush of ≥ ~0.3 ms (most disks: it was 2.5-3.5 ms on this machine while other jobs "
        "wrote) the row meets. Measured but not enough to close it: one table for envelope "
        "and metadata (one B-tree page less per commit) 93 µs instead of 113 µs of SQL "
        "CPU, skipping the `data_version` read 106 µs. What would close it: both of those "
        "(a schema migration of the outbox) plus a validation fast path for payloads built "
        "from a `Decision` (whose fields come from the verified list), about 45 µs in all: "
        "0.32 → ~0.27 ms, ~0.48-0.5×. The signature cannot be deferred to the sender "
        "without storing unsigned reports on disk, which the threat model rules out."
    ),
    "upload": (
        "the reference platform's report ingest is CPU-bound on Ed25519 verification: "
        "cryptography's `Ed25519PublicKey.verify` is 84 % of `_platform._Platform._ingest` "
        "(profile of 2,500 reports). The raw ingest without the SDK hits the same ceiling "
        "(baseline column) and the Sender gets 0.8× of it, so the SDK side is not the limit. "
        "On a quiet machine (load ~1) the platform used ~200 µs of CPU per report (notes), "
        "i.e. one process tops out near 5,000 reports per CPU second before HTTP and the "
        "uploading client take their share of the two cores: raw ingest 4,500/s, Sender "
        "3,700/s; under load (~5) 1,500/s and 1,240/s. To close it: (1) install "
        "PyNaCl, which `_platform` already uses when importable (`VERIFY_BACKEND`): measured "
        "here 271-366 µs instead of 503-625 µs per verify (1.7-1.9×); (2) verify on both "
        "cores: `_Platform._verify_batch` in a process pool, or several server processes "
        "sharing the report store. Independently, the Client's default `report_rate` "
        "(2,000/s, its own row) caps how fast a backlog drains."
    ),
}

RUNTIME = (
    "The done criterion (a full run within 20 minutes on 2 cores) is missed because of the "
    "SDK's own costs: measured in a full run at load 1-4, 40 min in all, of which the 10M "
    "sync alone took 22 min, more than the whole budget (its sqlite3 baseline, rows "
    "included, 4.7 min; the other baselines and subject set-up ~3 min), the two 1M "
    "publishes 3-4 min each (`_site.publish` validates and hashes every entry: 1,200-5,300 "
    "entries/s depending on load) and the 1M full sync 2 min. The 10M site is published "
    "once and cached (`--prepare-only`, 50 min here), so its publish is not counted. The "
    "fixes named above for the full sync (`Store._build`) "
    "shorten the run most; the publisher's cost is in `_models.parse_entry` (~50 % of a "
    "publish: pydantic validation and identifier checks) and `_site.public_record` (~28 %)."
)
