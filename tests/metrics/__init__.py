"""Tests of adpretrain_hf/metrics/."""
