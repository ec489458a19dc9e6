"""transformers' common model tests on every RoPE-ID class, stock Llama as the control in the same run.

The mixins come from the source distribution of the installed transformers, fetched once from the package
registry (``pip download``) into ``~/.cache/hf_ropeid/transformers-tests/<version>`` (or
``$HF_ROPEID_TRANSFORMERS_TESTS``). Its ``tests/`` folder ships the mixins but not the sub-packages two of
them import (exporters, generation, utils); those get empty stand-ins, for the control and RoPE-ID alike, so
the export and generation mixins are not part of this run. ``transformers_suite.py`` holds the testers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import transformers

from hf_ropeid.parameters import RECIPES

pytestmark = pytest.mark.transformers_common

HERE = Path(__file__).resolve().parent
STAND_INS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def transformers_tests_root() -> Path:
    """A folder holding the package ``transformers_tests`` (transformers' tests/*.py + stand-ins)."""
    version = transformers.__version__
    base = Path(os.environ.get("HF_ROPEID_TRANSFORMERS_TESTS", Path.home() / ".cache/hf_ropeid/transformers-tests"))
    root = base / version
    package = root / "transformers_tests"
    if (package / "test_modeling_common.py").exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=base))  # filled beside, then renamed: never a half-written cache
    target = staging / "transformers_tests"
    target.mkdir()
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"transformers=={version}", "-d", download],
            check=True, timeout=600,
        )
        (sdist,) = Path(download).glob("transformers-*.tar.gz")
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (target / parts[2]).write_bytes(archive.extractfile(member).read())
    if not (target / "test_modeling_common.py").exists():
        raise RuntimeError(f"transformers {version}'s source distribution has no tests/test_modeling_common.py")
    for name, text in {"__init__.py": "", **STAND_INS}.items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    if not root.exists():  # another run may have finished first; its copy is the same
        staging.rename(root)
    return root


def outcomes(junit: Path) -> dict[str, dict[str, str]]:
    """{suite class: {test name: "passed" | "failed" | "skipped"}} from a junit xml report."""
    result: dict[str, dict[str, str]] = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        suite = case.get("classname").rsplit(".", 1)[-1]
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                state = "failed"
            elif child.tag == "skipped":
                state = "skipped"
        result.setdefault(suite, {})[case.get("name")] = state
    return result


def regressions(results: dict[str, dict[str, str]], control: str = "StockLlamaTest") -> dict[str, list[str]]:
    """Per RoPE-ID suite: the tests the control passes that the suite does not pass (fails or skips)."""
    passed = {name for name, state in results[control].items() if state == "passed"}
    return {
        suite: sorted(name for name in passed if tests.get(name) != "passed")
        for suite, tests in results.items()
        if suite != control
    }


def test_regressions_counts_tests_the_control_passes_and_the_suite_does_not():
    results = {
        "StockLlamaTest": {"a": "passed", "b": "passed", "c": "failed", "d": "skipped"},
        "RopeID": {"a": "passed", "b": "failed", "c": "failed", "d": "passed"},
        "Other": {"a": "skipped", "b": "passed"},
    }
    assert regressions(results) == {"RopeID": ["b"], "Other": ["a"]}


@pytest.mark.timeout(3000)
def test_every_rope_id_class_passes_what_stock_llama_passes(tmp_path):
    root = transformers_tests_root()
    junit = tmp_path / "common.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(HERE)]), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "transformers_suite.py"), "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "-o", "timeout=600", f"--junitxml={junit}"],
        cwd=tmp_path, env=env, timeout=2900, stdout=subprocess.DEVNULL,
    )
    results = outcomes(junit)
    # the control and one suite per named recipe (transformers_suite.py asserts that it has one for each)
    assert "StockLlamaTest" in results and len(results) == len(RECIPES) + 1, f"suites run: {sorted(results)}"
    assert sum(state == "passed" for state in results["StockLlamaTest"].values()) > 50
    found = regressions(results)
    assert found == {suite: [] for suite in found}, f"tests stock Llama passes and RoPE-ID does not: {found}"
