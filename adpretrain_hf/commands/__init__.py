"""Subcommands of the `adpretrain` console script, one module each."""
