"""Collect the tests that live beside the code (passes/*_test.py) under their package name.

The source folders ir/, passes/ and runtime/ are installed as optgraph.ir, optgraph.passes and
optgraph.runtime. Without this hook pytest would import passes/x_test.py as a top-level module
``passes.x_test``, loading a second copy of the package and its pass registry.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles: "ci" keeps the default run short, "thorough" is for local soak runs
# (HYPOTHESIS_PROFILE=thorough pytest -m "not slow" passes/). CI=true selects "ci".
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=_SLOW_OK,
                          derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=_SLOW_OK,
                          print_blob=True)
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=_SLOW_OK,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

_ROOT = Path(__file__).parent
_PACKAGES = {"ir": "optgraph.ir", "passes": "optgraph.passes", "runtime": "optgraph.runtime"}


class _PackageModule(pytest.Module):
    def _getobj(self):  # type: ignore[override]
        rel = self.path.relative_to(_ROOT).with_suffix("")
        top, *rest = rel.parts
        return importlib.import_module(".".join([_PACKAGES[top], *rest]))


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    try:
        rel = module_path.relative_to(_ROOT)
    except ValueError:
        return None
    if rel.parts and rel.parts[0] in _PACKAGES:
        return _PackageModule.from_parent(parent, path=module_path)
    return None


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Walk the source folders as plain directories so pytest never imports their __init__.py."""
    try:
        rel = path.relative_to(_ROOT)
    except ValueError:
        return None
    if rel.parts and rel.parts[0] in _PACKAGES:
        return pytest.Dir.from_parent(parent, path=path)
    return None
