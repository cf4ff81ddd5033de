"""Make the in-tree bt_vmm importable when pytest is run without installing it."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import os
import shutil
import subprocess

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tests/asmkernel.py


@pytest.fixture(scope="session")
def built_guests(tmp_path_factory) -> Path:
    """The project's guest kernels, built from guests/ with the machine's gcc
    and binutils (part of the test setup, as on a fresh machine)."""
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        pytest.fail("building the test guests needs gcc and binutils (apt-get install gcc binutils)")
    out = tmp_path_factory.mktemp("guests")
    proc = subprocess.run(["make", "-s", "-C", str(Path(ROOT) / "guests"), f"B={out}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"guest build failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.fixture(scope="session")
def gdb_binary() -> str:
    """gdb, installed with apt-get when missing; skip only if that fails."""
    path = shutil.which("gdb")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "--no-install-recommends", "gdb"]
        if subprocess.run(install, capture_output=True, env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            subprocess.run(install, capture_output=True, env=env)
        path = shutil.which("gdb")
    if path is None:
        pytest.skip("gdb is not installed and apt-get could not install it")
    return path
