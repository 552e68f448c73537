"""Tests of adpretrain_hf/losses/."""
