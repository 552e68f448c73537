"""Helpers shared by test modules (fixtures live in conftest.py; plain values and functions here).

Import as ``from tests.helpers import ...``: ``tests/`` is a package, so pytest puts the repository
root on ``sys.path`` and test modules are imported as ``tests.<folder>.test_<name>``.
"""

# Prepended to a subprocess's script: makes adpretrain_hf unimportable, so remote code is shown
# to run from a saved folder alone, as on a machine that never installed the package.
BLOCK_PACKAGE_SNIPPET = '''
import sys
class _BlockAdpretrain:
    """Make adpretrain_hf unimportable, as on a machine that never installed it."""
    def find_spec(self, name, path=None, target=None):
        if name == "adpretrain_hf" or name.startswith("adpretrain_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _BlockAdpretrain())
'''
