"""The trap-and-emulate engine on the same guests as BT: what ring compression
gets right, and where Popek and Goldberg's condition fails on x86."""

from __future__ import annotations

import json

import pytest

from test_guests import run_cli


@pytest.mark.parametrize("guest", ["hello", "demo", "smc"])
def test_guests_without_sensitive_checks_run_under_trap(guest):
    proc = run_cli("run", "--guest", guest, "--engine", "trap", "--timeout", "60")
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr


def test_popf_cannot_restore_interrupts_under_trap_but_can_under_bt():
    """The sensitive guest's pushf/cli/.../popf checks: at ring 1 with IOPL 0,
    popf silently keeps IF, so the guest is left with interrupts off."""
    trap = run_cli("run", "--guest", "sensitive", "--engine", "trap")
    bt = run_cli("run", "--guest", "sensitive", "--engine", "bt")
    assert bt.returncode == 0 and "FAIL" not in bt.stdout
    assert trap.returncode != 0
    for check in ("FAIL popf sets IF", "FAIL sgdt returns loaded gdtr", "FAIL far jmp reloads cs"):
        assert check in trap.stdout
    # the same guest's instructions that do trap are emulated correctly
    assert "ok   cr0 TS via mov and clts" in trap.stdout or "ok   wrmsr/rdmsr IA32_SYSENTER_CS" in trap.stdout


def test_audit_counts_sensitive_instructions_by_mnemonic_and_address(tmp_path):
    out = tmp_path / "stats.json"
    run_cli("run", "--guest", "sensitive", "--engine", "trap", "--audit", "--stats-json", str(out))
    data = json.loads(out.read_text())
    by_mnemonic = data["sensitive_unprivileged_executed"]
    for name in ("pushf", "popf", "sgdt", "sidt"):
        assert by_mnemonic.get(name, 0) >= 1, by_mnemonic
    assert data["sensitive_unprivileged_by_address"]
    assert any(k.startswith("trap:") for k in data["exits_by_reason"])


def test_test_os_under_trap_fails_only_where_sensitive_instructions_leak(built_guests):
    proc = run_cli("run", str(built_guests / "testos.elf"), "--engine", "trap", "--timeout", "100")
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert [f.split(":")[0] for f in fails] == ["FAIL gdt_tss"]   # sgdt/str/CS read at ring 1
    assert "ok   preempt_rr" in proc.stdout and "ok   forkwait" in proc.stdout


def test_trap_only_options_are_refused_with_bt():
    assert run_cli("run", "--guest", "hello", "--audit").returncode == 2
    assert run_cli("run", "--guest", "hello", "--engine", "trap", "--check").returncode == 2
