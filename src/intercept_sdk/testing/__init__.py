"""Testing helpers for integrators: a real signed site in a temporary directory.

What an integrator needs in their own test suite, without network or real keys::

    from intercept_sdk.testing import TestPlatform

    def test_hotel_refuses_listed_guest(tmp_path):
        platform = TestPlatform(tmp_path)
        guest = platform.add_person(name="张三")          # a listed person, sensible defaults
        client = platform.client()                        # a Client synced to the site
        with pytest.raises(intercept_sdk.Intercepted):
            client.block(intercept_sdk.Person(guest["id_number"]), "consumption.star_hotel")
        platform.revoke(guest["entry_id"])                 # publish a change...
        client.sync()                                      # ...and see it applied
        assert client.check(Person(guest["id_number"]), "consumption.star_hotel").action == "allow"

Everything is real: Ed25519 keys, the publisher, signatures, the verifying client and the
SQLite store; only the location (a temporary directory, synced with the ``file`` platform)
differs from production. ``serve()`` runs the reference platform on loopback when a test
needs HTTP (reports, push); ``serve(faults=FaultSimulator())`` makes it misbehave on
purpose (:mod:`intercept_sdk.testing.faults`).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import random
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._client.client import Client
from .._client.keys import subscriber_keygen
from .._platform.keys import add_subscriber, keygen
from .._platform.publish import PublishResult, current_hash_key, publish
from .._protocol.identifiers import id_check
from .._protocol.sealing import record_id
from .synth import valid_id_number, valid_uscc

if TYPE_CHECKING:
    from .faults import FaultSimulator

__all__ = ["TestPlatform", "entry_fields", "make_id_number", "make_uscc"]

_RNG = random.Random(20261122)
_SEQ = itertools.count(_RNG.randrange(0, 500))


def make_id_number(
    birth: _dt.date | str = "1980-01-01",
    *,
    male: bool = True,
    area: str = "130203",
    seq: int | None = None,
) -> str:
    """A valid 18-digit resident ID number with the given birth date and sex.

    Without ``seq``, successive calls use successive sequence numbers, so up to 500 calls
    with the same birth date, sex and area never repeat a number within one process.
    """
    if isinstance(birth, str):
        birth = _dt.date.fromisoformat(birth)
    s = seq if seq is not None else next(_SEQ) % 500
    seq3 = f"{(s * 2 + (1 if male else 0)) % 1000:03d}"
    body = f"{area}{birth:%Y%m%d}{seq3}"
    return body + id_check(body)


def make_uscc(rng: random.Random | None = None) -> str:
    """A valid unified social credit code (with a valid embedded organisation code)."""
    return valid_uscc(rng or _RNG)


def entry_fields(n: int, **overrides: Any) -> dict[str, Any]:
    """The fields every list entry carries, with valid test values for case number ``n``
    (entry id ``T{n:07d}``, case and basis numbers ending in ``n``), then ``overrides``.

    Add the subject's fields (``subject_type``, ``name``, ``id_number`` ... or ``uscc``)
    for a complete entry, or use :meth:`TestPlatform.person_entry` /
    :meth:`TestPlatform.entity_entry`, which do. A ``filed_at`` after an overridden
    ``published_at`` is moved back to it (a filing never follows publication).
    """
    entry: dict[str, Any] = {
        "entry_id": f"T{n:07d}",
        "case_no": f"(2024)冀0203执{n}号",
        "court": "唐山市路北区人民法院",
        "basis_doc_no": f"(2023)冀0203民初{n}号",
        "basis_issuer": "唐山市路北区人民法院",
        "obligation": "被执行人应于判决生效后十日内支付申请执行人货款人民币100000元",
        "performance": "全部未履行",
        "situation": 1,
        "published_at": "2024-05-01",
        "filed_at": "2024-01-10",
        "performed_amount": "0",
        "unperformed_amount": "100000.00",
        "severity": 2,
        "status": "active",
        "visibility": "public",
        "measures": ["*"],
    }
    entry.update(overrides)
    if "filed_at" not in overrides and entry["filed_at"] > entry["published_at"]:
        entry["filed_at"] = entry["published_at"]
    return entry


class TestPlatform:
    """A signed static site in ``directory`` with a handful of entries.

    ``entries`` holds the platform's full current list (source format); every mutating
    helper republishes it unless ``publish=False``. ``subscriber_id`` gets a key pair (in
    ``directory/subscriber``) registered with the platform, so restricted entries and
    reports work out of the box.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        directory: str | Path,
        *,
        subscriber_id: str = "test-unit",
        expires: float = 86400.0,
        now: _dt.datetime | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.keys_dir = self.directory / "keys"
        self.site_dir = self.directory / "site"
        self.subscriber_id = subscriber_id
        self.subscriber_key_dir = self.directory / "subscriber"
        self.expires = expires
        self.now = now
        # Clients pin a copy of root v1, as an application ships it: `rotate_root` rewrites
        # keys/root.json, and a client must then walk the chain, not start from the new root.
        self.trust_root = self.directory / "pinned-root.json"
        self.trust_root.write_bytes(keygen(self.keys_dir).read_bytes())
        report_pub, box_pub = subscriber_keygen(self.subscriber_key_dir)
        add_subscriber(self.keys_dir, subscriber_id, report_pub.read_bytes(), box_pub.read_bytes())
        self.entries: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self.last: PublishResult | None = None
        self._clients: list[Client] = []

    # -- entries ------------------------------------------------------------------
    def _next_id(self) -> str:
        return f"T{next(self._ids):07d}"

    def _base(self, **overrides: Any) -> dict[str, Any]:
        return entry_fields(next(self._ids), **overrides)

    def person_entry(self, id_number: str | None = None, **overrides: Any) -> dict[str, Any]:
        """A valid person entry (not yet added), defaults for every field."""
        idn = id_number or valid_id_number(_RNG)
        from .._protocol.identifiers import id_number_info

        info = id_number_info(idn)
        published = _dt.date.fromisoformat(overrides.get("published_at", "2024-05-01"))
        fields: dict[str, Any] = {
            "subject_type": "person",
            "name": "张三",
            "id_number": info.id_number,
            "gender": info.sex,
            "age": info.age_on(published),
        }
        fields.update(overrides)
        return self._base(**fields)

    def entity_entry(
        self,
        uscc: str | None = None,
        *,
        related: Iterable[Mapping[str, Any]] = (),
        **overrides: Any,
    ) -> dict[str, Any]:
        """A valid entity entry (not yet added); ``related`` = [{role, name, id_number}]."""
        fields: dict[str, Any] = {"subject_type": "entity", "name": "唐山市某某建材有限公司"}
        if "org_code" not in overrides:
            fields["uscc"] = uscc or make_uscc()
        rel = [dict(r) for r in related]
        legal = next((r["name"] for r in rel if r.get("role") == "legal_rep"), "李四")
        fields["legal_rep_name"] = legal
        fields["related"] = rel
        fields.update(overrides)
        return self._base(**fields)

    def add(self, entry: Mapping[str, Any], *, publish: bool = True) -> dict[str, Any]:
        e = dict(entry)
        self.entries[e["entry_id"]] = e
        if publish:
            self.publish()
        return e

    def add_person(
        self, id_number: str | None = None, *, publish: bool = True, **kw: Any
    ) -> dict[str, Any]:
        """Add a listed person and republish; returns the entry (with its id_number)."""
        return self.add(self.person_entry(id_number, **kw), publish=publish)

    def add_entity(
        self,
        uscc: str | None = None,
        *,
        related: Iterable[Mapping[str, Any]] = (),
        publish: bool = True,
        **kw: Any,
    ) -> dict[str, Any]:
        """Add a listed entity (with related persons) and republish."""
        return self.add(self.entity_entry(uscc, related=related, **kw), publish=publish)

    def update(self, entry_id: str, *, publish: bool = True, **fields: Any) -> dict[str, Any]:
        """Change fields of an entry (``None`` removes a field) and republish."""
        e = self.entries[entry_id]
        for k, v in fields.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        if publish:
            self.publish()
        return e

    def revoke(self, entry_id: str, *, publish: bool = True) -> None:
        """Mark an entry revoked (a changed record in the next delta)."""
        e = self.entries[entry_id]
        e["status"] = "revoked"
        e["revoked_at"] = "2024-06-01T08:00:00+08:00"
        e["status_ground"] = "objection_upheld"
        if publish:
            self.publish()

    def remove(self, entry_id: str, *, publish: bool = True) -> None:
        """Delete an entry from the list (a ``D`` line in the next delta)."""
        del self.entries[entry_id]
        if publish:
            self.publish()

    def publish(self, **options: Any) -> PublishResult:
        """Publish the current list as the next version of the site."""
        self.last = publish(
            list(self.entries.values()),
            self.keys_dir,
            self.site_dir,
            expires=options.pop("expires", self.expires),
            now=options.pop("now", self.now),
            **options,
        )
        return self.last

    def record_id(self, entry_id: str) -> str:
        """The record id (hex) of ``entry_id`` in the current key epoch: what a sync's
        :class:`~intercept_sdk.ChangeSet` names (site format 2 publishes no entry ids)."""
        _epoch, hash_key = current_hash_key(self.keys_dir)
        return record_id(hash_key, entry_id).hex()

    # -- clients ------------------------------------------------------------------
    def client(
        self,
        cache_dir: str | Path | None = None,
        *,
        platform: str | None = None,
        sync: bool = True,
        **options: Any,
    ) -> Client:
        """A Client for this site (file platform unless ``platform`` is given), synced."""
        if self.last is None:
            self.publish()
        cache = Path(cache_dir) if cache_dir else self.directory / f"cache-{len(self._clients)}"
        options.setdefault("subscriber_key", self.subscriber_key_dir)
        client = Client(
            platform or str(self.site_dir),
            self.trust_root,
            cache,
            self.subscriber_id,
            **options,
        )
        self._clients.append(client)
        if sync:
            client.sync()
        return client

    @contextmanager
    def serve(self, *, faults: FaultSimulator | None = None, **options: Any) -> Iterator[Any]:
        """Run the reference platform for this site on a free loopback port.

        ``faults``: a :class:`~intercept_sdk.testing.faults.FaultSimulator` whose server
        side wraps the app; ``options`` go to ``PlatformServer``.
        """
        from .._platform.server import PlatformServer

        if self.last is None:
            self.publish()
        if faults is not None:
            options["middleware"] = [*options.get("middleware", ()), faults.middleware()]
        server = PlatformServer(
            self.site_dir,
            subscribers_dir=self.keys_dir / "subscribers",
            state_dir=self.directory / "platform-state",
            **options,
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def env(self, cache_dir: str | Path | None = None) -> dict[str, str]:
        """The ``INTERCEPT_*`` environment an integration (or an example) reads its
        configuration from, pointing at this site with this platform's subscriber key."""
        if self.last is None:
            self.publish()
        cache = Path(cache_dir) if cache_dir else self.directory / "env-cache"
        return {
            "INTERCEPT_PLATFORM": str(self.site_dir),
            "INTERCEPT_TRUST_ROOT": str(self.trust_root),
            "INTERCEPT_CACHE_DIR": str(cache),
            "INTERCEPT_SUBSCRIBER_ID": self.subscriber_id,
            "INTERCEPT_SUBSCRIBER_KEY": str(self.subscriber_key_dir),
        }

    def close(self) -> None:
        """Close every client this platform handed out (idempotent)."""
        for c in self._clients:
            c.close()
        self._clients.clear()

    def __enter__(self) -> TestPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
