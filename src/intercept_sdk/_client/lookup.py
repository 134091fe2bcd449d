"""Looking subjects up in the verified local list: secrets, one read, records opened.

Why a module: every decision (``check``, ``screen``, a watch) starts the same way: derive
the subject's identifier secrets under the current key epoch's hash key, read the sealed
records their 32-bit tags index in one read transaction, open the ones the identifiers
actually open (site format 2, decision 0011), and make sure the state read from is the
verified one. Doing that in one place is what makes ``screen()`` equal to ``check()``
subject by subject.

Guarantees:

* No answer without a verified list: :class:`NeverSynced` when the cache holds none.
* The hash key is held only in memory: it is taken from the subscriber's sealed box
  stored with the list (opened with the unit's X25519 key) when a state of a new key
  epoch is first read, never written anywhere.
* A record is opened only by an identifier it was sealed for: a tag shared by chance
  with an unrelated identifier does not open (the wrap is authenticated) and is no hit.
  A miss costs one HMAC and one index probe; only a tag that is present pays the work
  factor (one KEK derivation, remembered for the next check of the same identifier).
* A state not seen before is checked against its signed manifest (version, digest, key
  epoch, box); a cache replaced or rolled back outside the SDK raises
  :class:`StoreCorrupted` and no decision is made from it.
* A forward update racing a read (another process committed a newer version) is not an
  error: the read is made again from the newer version; so is a read under a key epoch
  that changed meanwhile (the secrets are derived again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .._exceptions import (
    FormatError,
    InvalidInput,
    NeverSynced,
    StoreCorrupted,
    StoreError,
    VerificationError,
)
from .._protocol.catalog import KEY_RELATIONS
from .._protocol.sealing import (
    TAG_BYTES,
    WorkFactor,
    kek_function,
    open_packed,
    open_sealed,
    record_id,
)
from .decisions import Entity, KeyMaker, Person, Probe, Subject, probes_for
from .store import PACKED_FORM, Hit, Store, StoreState
from .sync import Updater

__all__ = ["NEVER_SYNCED", "Lookup"]

NEVER_SYNCED = (
    "no verified list version in the cache yet: call sync() first "
    "(the SDK never answers 'allow' without a verified list)"
)

_RETRIES = 3
"""Reads made again after a racing update before giving up (never reached in practice)."""
_KEK_MEMO = 4096
"""KEKs of recently hit identifiers kept in memory (a guest checked again at the lift)."""


class Opener:
    """Opens the sealed records a secret's tag found, under one work factor.

    Under a costly (scrypt) work factor, keeps a bounded in-memory memo of KEKs by secret,
    so the work factor is paid once per listed identifier per process, not per check. The
    default work factor (one HMAC) is cheaper to pay again than to remember.
    """

    __slots__ = ("_derive", "_keks", "work")

    def __init__(self, work: WorkFactor) -> None:
        self.work = work
        self._keks: dict[bytes, bytes] | None = None if work.alg == "hmac" else {}
        self._derive = kek_function(work)

    def _kek(self, secret: bytes) -> bytes:
        """The memoised KEK under a costly work factor (``_keks`` is set)."""
        keks = self._keks
        assert keks is not None
        k = keks.get(secret)
        if k is None:
            if len(keks) >= _KEK_MEMO:
                keks.clear()
            k = keks[secret] = self._derive(secret)
        return k

    def open(self, secret: bytes, rows: Sequence[Hit]) -> list[Hit]:
        """The hits ``secret`` really opens among the rows its tag found: one per
        (record, relation), with the record's plaintext as ``record``."""
        return self.open_lines(secret, [row.record for row in rows])

    def open_lines(self, secret: bytes, lines: Sequence[bytes]) -> list[Hit]:
        """:meth:`open` of the stored sealed records (``_Codec.sealed``: a packed body or
        a signed line) the secret's tag found."""
        if len(lines) == 1:
            return self.open_one(secret, lines[0])
        out: list[Hit] = []
        for line in dict.fromkeys(lines):  # a record listed twice under one tag: once
            out.extend(self.open_one(secret, line))
        return out

    def open_one(self, secret: bytes, stored: bytes) -> list[Hit]:
        """:meth:`open_lines` of one stored sealed record (check()'s common case)."""
        key = self._derive(secret) if self._keks is None else self._kek(secret)
        try:
            if stored[0] == PACKED_FORM:
                got = open_packed(key, stored[1:], secret[:TAG_BYTES])
            else:
                got = open_sealed(key, stored, int.from_bytes(secret[:TAG_BYTES], "big"))
        except FormatError as exc:
            raise StoreCorrupted(f"a stored sealed record is malformed: {exc}") from None
        except VerificationError:
            raise StoreCorrupted("a stored sealed record body does not open") from None
        if got is None:
            return []  # another identifier sharing the 32-bit tag
        rid, plain, relations = got
        rid_hex = rid.hex()
        try:
            if len(relations) == 1:  # (a comprehension is one more frame)
                return [Hit(rid_hex, KEY_RELATIONS[relations[0]], secret, plain)]
            return [Hit(rid_hex, KEY_RELATIONS[rel], secret, plain) for rel in relations]
        except IndexError:
            raise StoreCorrupted("a sealed record names an unknown relation") from None


class Lookup:
    """Keys and hits of subjects in the current verified list (see the module docstring)."""

    def __init__(self, store: Store, updater: Updater) -> None:
        self.store = store
        self.updater = updater
        self.km: KeyMaker | None = None
        """The key maker of the key epoch last read under (None before the first read)."""
        self._epoch: tuple[int, bytes] | None = None  # (key_epoch, box digest) of self.km
        self.opener: Opener | None = None
        self._validated: StoreState | None = None
        self._ready: tuple[StoreState, KeyMaker] | None = None
        """The (state, key maker) pair :meth:`_usable` last accepted: :meth:`own` answers
        without re-checking while both are still the current ones."""

    def _rekey(self, state: StoreState) -> KeyMaker:
        """Open ``state``'s box (in memory only) and make the key maker of its hash key."""
        try:
            contents = self.updater.open_box(state.version, state.box)
        except (VerificationError, FormatError) as exc:
            raise StoreCorrupted(
                f"the stored box of version {state.version} does not open: {exc}"
            ) from None
        km = self.km = KeyMaker(contents.hash_key)
        self._epoch = (state.key_epoch, hashlib.sha256(state.box).digest())
        return km

    def keymaker(self) -> KeyMaker:
        """The key maker of the current list's hash key (NeverSynced without a list)."""
        km = self.km
        if km is None:
            state = self.store.state()
            if state is None:
                raise NeverSynced(NEVER_SYNCED)
            km = self._rekey(state)
        return km

    def published(self, entry_ids: Sequence[str]) -> set[str]:
        """Which of ``entry_ids`` the current list carries (public or restricted).

        The record id of an entry is derived under the current key epoch's hash key; the
        records themselves are not opened (that needs an identifier). NeverSynced
        without a list.
        """

        state = self.store.state()
        if state is None:
            raise NeverSynced(NEVER_SYNCED)
        km = self.km
        if km is None or self._epoch is None or self._epoch[0] != state.key_epoch:
            km = self._rekey(state)
        hash_key = km.hash_key
        by_rid = {record_id(hash_key, e).hex(): e for e in entry_ids}
        return {by_rid[rid] for rid in self.store.get_records(list(by_rid))}

    def subject_key(self, subject: Subject) -> bytes:
        """The key a decision about ``subject`` is audited under (its own identifier)."""
        km = self.keymaker()
        if isinstance(subject, Person):
            return km.person(subject.id_number)
        return km.org(subject.effective_org_code)

    def validate(self, state: StoreState) -> bool:
        """Check a store state not seen before against the verified manifest.

        Returns ``False`` when a newer version has meanwhile become current (another
        process committed it, or this process's pointer check lagged behind): the caller
        reads again instead of answering from the older version.

        Runs once per new state object (a new version, or a database file swapped under a
        running client): the manifest stored with the list must be the one this client
        verified, or must verify now against the trusted root, and must describe exactly
        this list (version, digest, key epoch, and this unit's box). Otherwise the cache
        was replaced or tampered with, and no decision is made from it.
        """
        trusted = self.updater.trusted.manifest
        if trusted is None or trusted.raw != state.manifest:
            # Verify this state's own manifest bytes (pure: the shared trusted state is not
            # touched, so threads and processes moving between versions do not race).
            # Raises VerificationError when it does not verify: fail closed.
            trusted = self.updater.trusted.verify_manifest_bytes(state.manifest)
        box = trusted.boxes.get(self.updater.locator()) if trusted is not None else None
        if (
            trusted is None
            or trusted.version != state.version
            or trusted.state_sha256 != state.state_sha256
            or trusted.key_epoch != state.key_epoch
            or box is None
            or box.sha256 != hashlib.sha256(state.box).hexdigest()
        ):
            raise StoreCorrupted("the cached list does not match its verified manifest")
        applied = self.updater._applied_version()
        if state.version < applied:
            # Either the cache was pointed back at an older database (a local rollback),
            # or another process committed a newer version after we read this one (and
            # this process's pointer check, made at most every 50 ms, has not seen it yet).
            self.store.refresh()
            fresh = self.store.state()
            if fresh is None or fresh.version < applied:
                raise StoreCorrupted(
                    f"the local list is version {state.version}, but version {applied} was "
                    "already applied to this cache: it was rolled back outside the SDK"
                )
            return False  # a forward update raced this read: read again from it
        if self.opener is None or self.opener.work != trusted.work:
            self.opener = Opener(trusted.work)
        self._validated = state
        return True

    def _usable(self, state: StoreState, km: KeyMaker) -> bool:
        """True when ``state`` is verified and read under ``km``'s key epoch; otherwise
        prepares the next read (re-keyed if the key epoch changed) and returns False."""
        if state is not self._validated and not self.validate(state):
            return False
        epoch = self._epoch
        if epoch is not None and km is self.km and epoch[0] == state.key_epoch:
            self._ready = (state, km)
            return True
        # A version of a new key epoch was applied meanwhile: re-key and look again.
        self._rekey(state)
        return False

    def _open(self, secrets: Sequence[bytes], rows: list[Hit]) -> list[Hit]:
        """The opened hits of ``secrets`` among index ``rows`` (keyed by tag)."""
        if not rows:
            return rows
        opener = self.opener
        assert opener is not None  # set by validate()
        if len(secrets) == 1:  # check() of a Person: every row is of its one tag
            return opener.open(secrets[0], rows)
        by_tag: dict[bytes, list[Hit]] = {}
        for row in rows:
            by_tag.setdefault(row.key, []).append(row)
        out: list[Hit] = []
        for secret in dict.fromkeys(secrets):
            found = by_tag.get(secret[:TAG_BYTES])
            if found:
                out.extend(opener.open(secret, found))
        return out

    def own(self, subject: Subject) -> tuple[bytes, StoreState, list[Hit]]:
        """``(key, state, hits)`` of a Person, or of an Entity without declared officers:
        :meth:`subject` for check()'s common case, whose only key is the subject's own.

        One memoised secret, one statement (:meth:`Store.lines_of`), the lines opened; a
        state or key epoch not accepted before goes through :meth:`subject`, which checks
        it, so both answer alike.
        """
        km = self.km
        ready = self._ready
        if km is not None and ready is not None and ready[1] is km:
            if isinstance(subject, Person):
                key = km.person(subject.id_number)
            else:
                key = km.org(subject.effective_org_code)
            try:
                state, lines = self.store.lines_of(key[:TAG_BYTES])
            except NeverSynced:
                raise NeverSynced(NEVER_SYNCED) from None
            if state is ready[0]:
                opener = self.opener
                assert opener is not None  # set by validate()
                if not lines:
                    return key, state, []
                if len(lines) == 1:
                    return key, state, opener.open_one(key, lines[0])
                return key, state, opener.open_lines(key, lines)
        _probes, keys, state, hits = self.subject(subject)
        return keys[0], state, hits

    def subject(
        self, subject: Subject
    ) -> tuple[list[Probe] | None, list[bytes], StoreState, list[Hit]]:
        """Keys of ``subject`` under the current hash key, and their hits in one read.

        Returns ``(probes, keys, state, hits)``; ``probes`` is ``None`` for a Person (its
        one probe is built only if its key hits, see :func:`~.decisions.own_probe`).
        """
        for _ in range(_RETRIES):
            km = self.km or self.keymaker()
            probes: list[Probe] | None
            if type(subject) is Person:
                probes = None
                keys = [km.person(subject.id_number)]
            else:
                probes = probes_for(subject, km.person, km.org)
                keys = [p.key for p in probes]
            try:
                state, rows = self.store.lookup([k[:TAG_BYTES] for k in keys])
            except NeverSynced:
                raise NeverSynced(NEVER_SYNCED) from None
            if self._usable(state, km):
                return probes, keys, state, self._open(keys, rows)
        raise StoreError(  # pragma: no cover
            "the list keeps changing under this read; cannot answer"
        )

    def batch(
        self, subjects: Sequence[Subject]
    ) -> tuple[list[bytes], dict[int, list[Probe]], StoreState, dict[bytes, list[Hit]]]:
        """Own keys of ``subjects`` and the hits of every key in one read transaction.

        Returns ``(keys, several, state, by_key)``: ``keys[i]`` is subject ``i``'s own
        key (:meth:`KeyMaker.own_keys`: no Probe, no memo), ``several`` the probes of the
        entities with officers (whose keys are looked up too), ``by_key`` the hits.
        """
        for s in subjects:
            if not isinstance(s, (Person, Entity)):
                raise InvalidInput("subjects must be Person or Entity objects")
        for _ in range(_RETRIES):
            km = self.km or self.keymaker()
            keys, several = km.own_keys(subjects)
            wanted = keys
            if several:  # entities with officers: their officers' keys too
                wanted = keys + [p.key for ps in several.values() for p in ps[1:]]
            try:
                state, by_tag = self.store.lookup_batch([k[:TAG_BYTES] for k in wanted])
            except NeverSynced:
                raise NeverSynced(NEVER_SYNCED) from None
            if self._usable(state, km):
                return keys, several, state, self._open_batch(wanted, by_tag)
        raise StoreError(  # pragma: no cover
            "the list keeps changing under this read; cannot answer"
        )

    def _open_batch(
        self, secrets: Sequence[bytes], by_tag: dict[bytes, list[Hit]]
    ) -> dict[bytes, list[Hit]]:
        """The opened hits of each secret whose tag is in ``by_tag``; secrets that open
        nothing (a tag shared by chance) are absent, as misses are."""
        if not by_tag:
            return {}
        opener = self.opener
        assert opener is not None  # set by validate()
        out: dict[bytes, list[Hit]] = {}
        for secret in dict.fromkeys(secrets):
            rows = by_tag.get(secret[:TAG_BYTES])
            if rows:
                hits = opener.open(secret, rows)
                if hits:
                    out[secret] = hits
        return out
