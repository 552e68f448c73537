"""Tests of modeling/ (installed as adpretrain_hf.modeling)."""
