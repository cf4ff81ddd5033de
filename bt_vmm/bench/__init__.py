"""`bt-vmm bench`: the benchmark suite (nanobenchmarks after Adams & Agesen,
ASPLOS 2006, and macrobenchmarks), per engine and natively.

    from bt_vmm.bench import BenchConfig, run_bench
    report = run_bench(BenchConfig(only="syscall,callret", repeat=3))

See harness.py for the method, guests/bench/README.md for the guest.
"""

from bt_vmm.bench.harness import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
