"""Model card template and the cards of the planned checkpoints (shipped as package data)."""
