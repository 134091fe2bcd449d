"""Async testing helper: an :class:`~intercept_sdk.AsyncClient` on a :class:`TestPlatform`.

``async with async_client(platform) as client:`` gives a synced ``AsyncClient`` with the
platform's subscriber key (file platform unless ``platform_url`` is given), closed on
exit; ``background=True`` starts its task on the running loop. For pytest, run the test
with ``asyncio.run(...)`` or pytest-asyncio/anyio.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._client.client import AsyncClient

if TYPE_CHECKING:
    from . import TestPlatform

__all__ = ["async_client"]

_counter = itertools.count()


@contextlib.asynccontextmanager
async def async_client(
    platform: TestPlatform,
    cache_dir: str | Path | None = None,
    *,
    platform_url: str | None = None,
    sync: bool = True,
    background: bool = False,
    **options: Any,
) -> AsyncIterator[AsyncClient]:
    """A synced ``AsyncClient`` for ``platform`` (see the module docstring)."""
    if platform.last is None:
        platform.publish()
    cache = Path(cache_dir) if cache_dir else platform.directory / f"async-cache-{next(_counter)}"
    options.setdefault("subscriber_key", platform.subscriber_key_dir)
    client = AsyncClient(
        platform_url or str(platform.site_dir),
        platform.trust_root,
        cache,
        platform.subscriber_id,
        background=background,
        **options,
    )
    try:
        if sync:
            await client.sync()
        yield client
    finally:
        await client.aclose()
