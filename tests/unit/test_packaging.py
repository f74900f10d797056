"""What `pip install .` ships: every folder of Python code under geomys/ is a package."""

from pathlib import Path

import geomys

ROOT = Path(geomys.__file__).parent


def test_every_code_folder_under_geomys_is_a_package():
    folders = {path.parent for path in ROOT.rglob("*.py") if "__pycache__" not in path.parts}
    missing = sorted(str(folder.relative_to(ROOT.parent)) for folder in folders
                     if not (folder / "__init__.py").exists())
    assert missing == [], "folders without __init__.py are left out of installs: %s" % missing
