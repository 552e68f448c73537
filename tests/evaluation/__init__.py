"""Tests of adpretrain_hf/evaluation/."""
