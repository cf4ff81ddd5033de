"""shadow_mmu."""
