"""Translation cache: CCFs in the monitor region, lookup, chaining, invalidation."""

from bt_vmm.tcache.cache import CCF, TCache

__all__ = ["CCF", "TCache"]
