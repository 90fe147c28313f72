"""Per-model decode loop: requests, planning, sampling, streaming text."""
