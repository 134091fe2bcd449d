"""Benchmarks of intercept-sdk, each figure measured next to its physical floor.

Run from the repository root::

    python -m benchmarks                       # default size: the 1M-entry figures
    python -m benchmarks --size full           # adds the 10M-entry sync and client start
    python -m benchmarks --size smoke --out /tmp/b   # tiny sizes, a minute: checks the harness
    python -m benchmarks --only check,screen   # some figures (their set-up runs too)

Every figure is measured in one run, on the same machine, next to its baseline (a raw
``sqlite3`` statement, a Python ``dict``, the poll interval...), so ratios stay meaningful
on a noisy machine even when absolute timings do not. Synthetic data comes from
:func:`intercept_sdk.testing.synth.generate_entries`, the generator the demo uses. The run
writes a JSON file (``benchmarks/results/``, git-ignored) and a Markdown table
(``docs/benchmarks.md``) with the machine details.

Modules: :mod:`benchmarks.harness` (CLI, rows, output), :mod:`benchmarks.data` (cached
synthetic lists, subjects, baseline rows), :mod:`benchmarks.lookups` (check, screen),
:mod:`benchmarks.syncs` (publish, full/delta/10M sync, client start, sizes),
:mod:`benchmarks.push` (revocation propagation), :mod:`benchmarks.reports` (report
enqueue and upload), :mod:`benchmarks.render` (Markdown), and the subprocess workers
:mod:`benchmarks.sync_worker` and :mod:`benchmarks.start_worker` (so a sync's peak RSS
is the syncing client's alone).
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the parent of ``benchmarks/``)."""
