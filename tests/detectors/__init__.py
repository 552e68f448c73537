"""Tests of adpretrain_hf/detectors/."""
