"""Kernel image loaders: turn a file into the guest RAM contents and entry state.

Loaders are pure (no unicorn): they validate the image and return a BootImage
that the machine applies, so every check is testable without an emulator.
"""

from typing import Sequence

from bt_vmm.errors import BadInput
from bt_vmm.loaders.elf import printable_name
from bt_vmm.loaders.linux import is_bzimage, load_linux
from bt_vmm.loaders.multiboot import BootImage, Module, is_multiboot, load_multiboot

__all__ = ["BootImage", "Module", "is_bzimage", "is_multiboot", "load_kernel", "load_linux",
           "load_multiboot"]


def load_kernel(path: str, data: bytes, mem_size: int, cmdline: str = "",
                modules: Sequence[Module] = (), initrd: Module | None = None) -> BootImage:
    """Boot a Linux bzImage by the Linux boot protocol and anything else by
    Multiboot; modules belong to Multiboot, an initrd to Linux."""
    if is_bzimage(data):
        if modules:
            raise BadInput(f"{printable_name(path)}: is a Linux bzImage: give its initramfs "
                           f"with --initrd, not --module")
        return load_linux(path, data, mem_size, cmdline,
                          None if initrd is None else initrd.data,
                          "initrd" if initrd is None else initrd.name)
    if initrd is not None:
        raise BadInput(f"{printable_name(path)}: --initrd applies to Linux bzImage kernels "
                       f"(a Multiboot kernel takes --module)")
    return load_multiboot(path, data, mem_size, cmdline, modules)
