"""shadow_mmu: the page tables unicorn really walks (mmu.py), derived from the
guest's, and the traces that keep them and the TC coherent (traces.py)."""
