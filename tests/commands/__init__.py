"""Tests of adpretrain_hf/commands/ (the CLI subcommands)."""
