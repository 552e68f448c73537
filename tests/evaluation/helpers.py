"""The evaluation tests' tiny dataset (conftest.py's ``mvtec_root``), as constants the tests check against."""

CATEGORIES = ["tile", "bottle"]
NUM_NORMAL, NUM_ANOMALOUS = 4, 2  # per category: 4 train normals; test = 2 anomalous + 2 normal
