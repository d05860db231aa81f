"""`make soak`: the fault suite's scenarios at scale and for longer (see docs/reliability.md)."""
