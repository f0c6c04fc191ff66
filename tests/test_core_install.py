"""The core install runs every verb; optional extras refuse in one line; CI runs the README.

CI (.ci/run) installs the core package alone in a fresh virtual environment and runs the README's
quick start there; these tests keep the pieces honest in the full test environment: the README's
commands are what CI runs, every third-party import of the package is a core dependency or sits
behind an extra, and with an extra's modules made unimportable the verbs that need it refuse in
one line while the others (convert from .npz) work.
"""

from __future__ import annotations

import ast
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_maskrcnn"
# import name -> the pyproject.toml dependency that brings it
CORE_IMPORTS = {"tensorflow": "tensorflow", "keras": "keras", "numpy": "numpy",
                "pycocotools": "pycocotools", "PIL": "pillow", "h5py": "h5py",
                "tensorboard": "tensorboard"}
OPTIONAL_IMPORTS = {"torch": "torch", "torchvision": "torch", "jax": "jax", "tf2onnx": "onnx", "onnx": "onnx",
                    "onnxruntime": "onnx", "ai_edge_litert": "litert", "matplotlib": "plots",
                    "openvino": "openvino"}
BLOCKER = """
import sys, importlib.abc
BLOCKED = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, Blocker())
from keras_maskrcnn.cli import main
sys.exit(main(sys.argv[2:]))
"""


def readme_tool():
    return runpy.run_path(str(ROOT / ".ci" / "readme.py"))


def test_ci_runs_the_readme_quick_start_as_printed():
    tool = readme_tool()
    install_and_run, tests = tool["quick_start_blocks"]((ROOT / "README.md").read_text())
    assert install_and_run.startswith("pip install -e . && "), install_and_run  # core only
    assert "keras-maskrcnn train" in install_and_run
    assert '".[test' in tests and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme.py install-and-run" in ci and "readme.py tests" in ci
    assert tests in ci  # the comment beside it shows the command as the README prints it
    assert "-m venv" in ci  # a fresh environment every run


def test_ci_checks_the_reported_ap(tmp_path):
    tool = readme_tool()
    log = tmp_path / "log"
    log.write_text('training...\n{"bbox": {"AP": 0.81, "AP50": 0.9, "AP75": 0.8}, '
                   '"segm": {"AP": 0.87, "AP50": 0.9, "AP75": 0.9}}\n')
    assert tool["main"](["check-ap", str(log)]) == 0
    log.write_text('{"bbox": {"AP": 0.01}, "segm": {"AP": 0.02}}\n')
    assert tool["main"](["check-ap", str(log)]) == 1
    log.write_text("Traceback (most recent call last):\n")
    with pytest.raises(SystemExit, match="no COCO metrics"):
        tool["main"](["check-ap", str(log)])


def third_party_imports() -> dict[str, set[tuple[str, bool]]]:
    """import name -> {(module file, at module top level)} for every non-stdlib, non-package
    import in keras_maskrcnn."""
    found: dict[str, set[tuple[str, bool]]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "import_module" and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names = [node.args[0].value]  # importlib.import_module("name")
            for name in names:
                root = name.split(".")[0]
                if root in sys.stdlib_module_names or root in ("keras_maskrcnn", "__future__"):
                    continue
                found.setdefault(root, set()).add((str(path.relative_to(ROOT)), id(node) in top_level))
    return found


def test_every_import_is_a_core_dependency_or_behind_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("<")[0].split("=")[0].strip().lower()
            for dep in project["dependencies"]}
    extras = project["optional-dependencies"]
    for name, where in sorted(third_party_imports().items()):
        if name in CORE_IMPORTS:
            assert CORE_IMPORTS[name] in core, f"{name} (imported in {where}) is not a dependency"
        else:
            assert name in OPTIONAL_IMPORTS, f"{name} (imported in {sorted(where)}) is neither a " \
                "core dependency nor behind an extra"
            extra = OPTIONAL_IMPORTS[name]
            assert extra in extras, f"extra {extra} missing from pyproject.toml"
            top = sorted(file for file, at_top in where if at_top)
            assert not top, f"optional {name} imported at module level in {top}"


def run_cli_without(blocked: tuple[str, ...], *argv: str, timeout: int = 300):
    return subprocess.run([sys.executable, "-c", BLOCKER, ",".join(blocked), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_onnx_export_without_the_extra_is_one_line(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    done = run_cli_without(("tf2onnx", "onnx", "onnxruntime"), "export", "--model", str(model),
                           "--format", "onnx", "--output", str(tmp_path / "m.onnx"), timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        'keras-maskrcnn export: error: --format onnx needs tf2onnx: pip install -e ".[onnx]"'


def test_pth_without_torch_is_one_line_and_npz_needs_no_torch(tmp_path):
    (tmp_path / "weights.pth").write_bytes(b"not read")
    done = run_cli_without(("torch", "torchvision"), "convert", "torchvision",
                           str(tmp_path / "weights.pth"), "--output", str(tmp_path / "out"), timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert 'needs torch: pip install -e ".[parity]"' in done.stderr
    assert not (tmp_path / "out").exists()

    from test_torchvision_convert import synthetic_v1_state

    np.savez(tmp_path / "state.npz", **synthetic_v1_state(3, np.random.default_rng(0)))
    done = run_cli_without(("torch", "torchvision"), "convert", "torchvision",
                           str(tmp_path / "state.npz"), "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "config.json").is_file()
    assert (tmp_path / "out" / "model.weights.h5").is_file()
