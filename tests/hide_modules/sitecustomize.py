"""Put this folder first on PYTHONPATH to run Python as if some packages were not installed.

``HIDE_MODULES=torch,tabulate`` makes ``import torch`` (and its submodules) raise
``ModuleNotFoundError``, as on a machine where ``pip install -e .`` did not bring them.
Used by the tests of optional dependencies (tests/test_optional_deps.py, test_readme.py).
"""

import os
import sys

_HIDDEN = {m.strip() for m in os.environ.get("HIDE_MODULES", "").split(",") if m.strip()}


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if _HIDDEN:
    sys.meta_path.insert(0, _Hide())
