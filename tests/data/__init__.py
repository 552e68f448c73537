"""Tests of adpretrain_hf/data/."""
