"""Differential verification of the translator: every case runs untranslated in
unicorn (the reference) and through the BT engine from the same state, and
everything the guest could observe is compared. See harness.py for one case,
generate.py for the generated ones, realcode.py for TUs cut from kernels and
cli.py for `bt-vmm selfcheck`."""
