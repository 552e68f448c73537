"""The test suite: one module per package module, at the mirrored path (tests/project/test_tests_mirror_package.py checks it)."""
