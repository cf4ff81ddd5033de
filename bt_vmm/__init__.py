"""bt_vmm: a binary-translation hypervisor for 32-bit x86 guests, running on unicorn."""

__version__ = "0.1.0"
