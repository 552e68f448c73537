"""Tests of adpretrain_hf/references/."""
