"""Test-wide settings.

Hypothesis explores new random examples on every local run (that is how it finds bugs), but CI must give the
same verdict for the same commit: with ``CI`` set, examples are derived from each test's name instead.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
