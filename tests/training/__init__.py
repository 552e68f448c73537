"""Tests of training/ (installed as adpretrain_hf.training)."""
