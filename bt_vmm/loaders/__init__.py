"""Kernel image loaders: turn a file into the guest RAM contents and entry state.

Loaders are pure (no unicorn): they validate the image and return a BootImage
that the machine applies, so every check is testable without an emulator.
"""

from bt_vmm.loaders.multiboot import BootImage, Module, is_multiboot, load_multiboot

__all__ = ["BootImage", "Module", "is_multiboot", "load_multiboot"]
