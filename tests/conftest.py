"""Hypothesis profiles: `make test` replays the same examples every run (a CI failure is a
real, reproducible bug, never a lucky draw); `make fuzz` (ZTPKI_FUZZ_EXAMPLES) explores
freshly each time."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, deadline=None, print_blob=True)
settings.load_profile("fuzz" if os.environ.get("ZTPKI_FUZZ_EXAMPLES") else "ci")
