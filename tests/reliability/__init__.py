"""The reliability and security suite: crashes, faults, attacks, bad input, concurrency.

Every scenario counts its runs and failures (see ``conftest.py``) and the session ends
with a table of them. The default size is the short one (part of ``pytest -q``);
``INTERCEPT_RELIABILITY=full`` runs the full one documented in ``docs/reliability.md``.
"""
