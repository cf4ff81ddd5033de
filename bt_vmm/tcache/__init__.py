"""tcache."""
