"""vcpu."""
