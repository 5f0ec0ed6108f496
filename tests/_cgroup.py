"""Real memory cgroups for tests: see harness/cgroup.py (the benchmarks use it too)."""

from harness.cgroup import MemoryCgroup, memory_cgroup, unavailable

__all__ = ["MemoryCgroup", "memory_cgroup", "unavailable"]
