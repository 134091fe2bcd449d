"""Looking subjects up in the verified local list: keys, one read, and the state checked.

Why a module: every decision (``check``, ``screen``, a watch) starts the same way: derive
the subject's keyed identifiers under the current list's hash key, read their hits in one
read transaction, and make sure the state read from is the verified one. Doing that in
one place is what makes ``screen()`` equal to ``check()`` subject by subject.

Guarantees:

* No answer without a verified list: :class:`NeverSynced` when the cache holds none.
* A state not seen before is checked against its signed manifest (version, digest, hash
  key); a cache replaced or rolled back outside the SDK raises :class:`StoreCorrupted`
  and no decision is made from it.
* A forward update racing a read (another process committed a newer version) is not an
  error: the read is made again from the newer version; so is a read under a hash key
  that changed meanwhile (the keys are derived again).
"""

from __future__ import annotations

from collections.abc import Sequence

from .._exceptions import InvalidInput, NeverSynced, StoreCorrupted, StoreError
from .decisions import Entity, KeyMaker, Person, Probe, Subject, probes_for
from .store import Hit, Store, StoreState
from .sync import Updater

__all__ = ["NEVER_SYNCED", "Lookup"]

NEVER_SYNCED = (
    "no verified list version in the cache yet: call sync() first "
    "(the SDK never answers 'allow' without a verified list)"
)

_RETRIES = 3
"""Reads made again after a racing update before giving up (never reached in practice)."""


class Lookup:
    """Keys and hits of subjects in the current verified list (see the module docstring)."""

    def __init__(self, store: Store, updater: Updater) -> None:
        self.store = store
        self.updater = updater
        self.km: KeyMaker | None = None
        """The key maker of the hash key last read under (None before the first read)."""
        self._validated: StoreState | None = None

    def keymaker(self) -> KeyMaker:
        """The key maker of the current list's hash key (NeverSynced without a list)."""
        km = self.km
        if km is None:
            state = self.store.state()
            if state is None:
                raise NeverSynced(NEVER_SYNCED)
            km = self.km = KeyMaker(state.hash_key)
        return km

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
        this list (version, digest, hash key). Otherwise the cache was replaced or
        tampered with, and no decision is made from it.
        """
        trusted = self.updater.trusted.manifest
        if trusted is None or trusted.raw != state.manifest:
            # Verify this state's own manifest bytes (pure: the shared trusted state is not
            # touched, so threads and processes moving between versions do not race).
            # Raises VerificationError when it does not verify: fail closed.
            trusted = self.updater.trusted.verify_manifest_bytes(state.manifest)
        if (
            trusted is None
            or trusted.version != state.version
            or trusted.state_sha256 != state.state_sha256
            or trusted.hash_key != state.hash_key
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
        self._validated = state
        return True

    def _usable(self, state: StoreState, km: KeyMaker) -> bool:
        """True when ``state`` is verified and read under ``km``'s hash key; otherwise
        prepares the next read (re-keyed if the hash key changed) and returns False."""
        if state is not self._validated and not self.validate(state):
            return False
        if state.hash_key == km.hash_key:
            return True
        # A version with a new hash key was applied meanwhile: re-key and look again.
        self.km = KeyMaker(state.hash_key)
        return False

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
                state, hits = self.store.lookup(keys)
            except NeverSynced:
                raise NeverSynced(NEVER_SYNCED) from None
            if self._usable(state, km):
                return probes, keys, state, hits
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
                state, by_key = self.store.lookup_batch(wanted)
            except NeverSynced:
                raise NeverSynced(NEVER_SYNCED) from None
            if self._usable(state, km):
                return keys, several, state, by_key
        raise StoreError(  # pragma: no cover
            "the list keeps changing under this read; cannot answer"
        )
