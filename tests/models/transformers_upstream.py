"""transformers' own ``tests/test_modeling_common.py`` (``ModelTesterMixin``), fetched from the transformers sdist.

The transformers wheel does not ship its tests; the sdist on PyPI ships ``tests/*.py``. The mixin reaches into the
library's internals, so only the file of the *installed* version fits. :func:`transformers_tests_dir` gives that
folder: ``$HF_DYNAMIC_TRANSFORMERS_TESTS`` if set, else ``<venv>/transformers-tests/<version>/tests``, fetched with
``pip download`` on first use. ``make setup`` fetches it ahead of the tests (``python
tests/models/transformers_upstream.py``), so the test run itself needs no network.

Run as a script: fetch the folder for the installed transformers and print its path.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "_transformers_upstream_tests"
MARKER = "test_modeling_common.py"
# Modules test_modeling_common.py imports that the sdist lacks, each with the mixin name it takes from them.
MISSING_MIXINS = {"exporters.test_export": "ExportTesterMixin", "generation.test_utils": "GenerationTesterMixin"}


def transformers_tests_dir(version: str = transformers.__version__) -> Path:
    """The ``tests/`` folder of the transformers ``version`` sdist (fetched when missing)."""
    override = os.environ.get("HF_DYNAMIC_TRANSFORMERS_TESTS")
    if override:
        return Path(override)
    target = Path(sys.prefix) / "transformers-tests" / version
    if not (target / "tests" / MARKER).is_file():
        fetch_transformers_tests(version, target)
    return target / "tests"


def fetch_transformers_tests(version: str, target: Path) -> None:
    """``pip download`` the transformers ``version`` sdist and unpack its top-level ``tests/*.py`` into
    ``target/tests``.

    Unpacked into a temporary folder that is renamed into place, so an interrupted fetch leaves nothing half written
    and of two concurrent fetches (pytest-xdist workers) the second one's rename fails harmlessly."""
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"transformers-{version}/tests/"
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                        "--dest", scratch, f"transformers=={version}"], check=True)
        unpacked = Path(scratch) / "unpacked"
        (unpacked / "tests").mkdir(parents=True)
        with tarfile.open(Path(scratch) / f"transformers-{version}.tar.gz") as archive:
            for member in archive.getmembers():
                name = member.name[len(prefix):] if member.name.startswith(prefix) else ""
                if member.isfile() and name.endswith(".py") and "/" not in name:
                    (unpacked / "tests" / name).write_bytes(archive.extractfile(member).read())
        if not (unpacked / "tests" / MARKER).is_file():
            raise FileNotFoundError(f"the transformers {version} sdist has no tests/{MARKER}")
        try:
            unpacked.rename(target)
        except OSError:
            if not (target / "tests" / MARKER).is_file():
                raise


def load_model_tester_mixin():
    """``tests/test_modeling_common.py`` of the installed transformers, imported as a module of the package
    ``_transformers_upstream_tests`` (it uses relative imports).

    The two modules of :data:`MISSING_MIXINS` are not in the sdist; each is registered as a module holding an empty
    mixin: the empty ``ExportTesterMixin`` adds no test (the export tests do not run), and a tester that does not
    inherit the empty ``GenerationTesterMixin`` runs no generation test."""
    name = f"{PACKAGE}.{MARKER[:-3]}"
    if name in sys.modules:
        return sys.modules[name]
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(transformers_tests_dir())]
    sys.modules[PACKAGE] = package
    for module_name, mixin in MISSING_MIXINS.items():
        parent = f"{PACKAGE}.{module_name.split('.')[0]}"
        sys.modules.setdefault(parent, types.ModuleType(parent)).__path__ = []
        module = types.ModuleType(f"{PACKAGE}.{module_name}")
        setattr(module, mixin, type(mixin, (), {"__doc__": f"tests/{module_name.replace('.', '/')}.py is not in "
                                                           "the transformers sdist"}))
        sys.modules[module.__name__] = module
    return importlib.import_module(name)


if __name__ == "__main__":
    print(transformers_tests_dir())
