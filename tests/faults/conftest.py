"""The fault suite's shared set-up: one reproducible hypothesis profile, and the harness.

The ``faults`` profile is derandomized and keeps no example database, so CI generates the same
inputs on every run and a failure reproduces from the seed printed with it. ``soak`` draws many
more examples (``make soak`` loads it); ``HYPOTHESIS_PROFILE`` picks another one by name.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

# Pure parsers: a generous deadline, because the machine is two shared cores and a GC pause or a
# neighbour's burst must not turn into a flaky "deadline exceeded".
settings.register_profile(
    "faults",
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=2),
    max_examples=300,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "soak",
    parent=settings.get_profile("faults"),
    max_examples=5000,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "faults"))
