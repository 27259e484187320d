"""Local pip bundling of the aggregator asset."""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import pytest

from infra import bundling
from infra.bundling import BundlingError, PipLocalBundling, pip_install_command

pytestmark = pytest.mark.infra

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fake_python(tmp_path: Path, body: str) -> str:
    """Write an interpreter stand-in that runs ``body`` instead of pip."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport sys, pathlib\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


_FAKE_PIP = """
target = pathlib.Path(sys.argv[sys.argv.index("--target") + 1])
(target / "numpy" / "_core" / "tests").mkdir(parents=True)
(target / "numpy" / "_core" / "tests" / "test_x.py").write_text("")
(target / "numpy" / "__init__.py").write_text("")
(target / "bin").mkdir()
(target / "bin" / "f2py").write_text("")
"""


def _source_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for package in ("fedcore", "lambdas"):
        shutil.copytree(REPO_ROOT / package, root / package)
    shutil.copy(REPO_ROOT / "requirements-lambda.txt", root)
    (root / "lambdas" / "__pycache__").mkdir(exist_ok=True)
    (root / "lambdas" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    return root


def test_pip_targets_runtime_python():
    command = pip_install_command(Path("req.txt"), Path("out"))
    version = command[command.index("--python-version") + 1]
    assert bundling.LAMBDA_RUNTIME.name == f"python{version}"


def test_pip_platform_manylinux_2_28():
    command = pip_install_command(Path("req.txt"), Path("out"))
    assert command[command.index("--platform") + 1] == "manylinux_2_28_x86_64"
    assert "--only-binary=:all:" in command


def test_architecture_matches_platform():
    assert bundling.PIP_PLATFORM.endswith("x86_64")
    assert bundling.LAMBDA_ARCHITECTURE.name == "x86_64"


def test_try_bundle_copies_sources(tmp_path):
    root = _source_root(tmp_path)
    output = tmp_path / "asset"
    output.mkdir()
    bundler = PipLocalBundling(root, python=_fake_python(tmp_path, _FAKE_PIP))
    assert bundler.try_bundle(str(output)) is True
    assert (output / "lambdas" / "aggregator" / "constants.py").is_file()
    assert (output / "fedcore" / "layout.py").is_file()


@pytest.mark.parametrize(
    "stripped",
    ["numpy/_core/tests", "bin", "lambdas/__pycache__"],
)
def test_try_bundle_strips(tmp_path, stripped):
    root = _source_root(tmp_path)
    output = tmp_path / "asset"
    output.mkdir()
    PipLocalBundling(root, python=_fake_python(tmp_path, _FAKE_PIP)).try_bundle(
        str(output)
    )
    assert not (output / stripped).exists()


def test_try_bundle_keeps_packages(tmp_path):
    root = _source_root(tmp_path)
    output = tmp_path / "asset"
    output.mkdir()
    PipLocalBundling(root, python=_fake_python(tmp_path, _FAKE_PIP)).try_bundle(
        str(output)
    )
    assert (output / "numpy" / "__init__.py").is_file()


def test_pip_failure_raises(tmp_path):
    root = _source_root(tmp_path)
    failing = _fake_python(
        tmp_path, "print('no network', file=sys.stderr); sys.exit(3)"
    )
    with pytest.raises(BundlingError, match="exit code 3: no network"):
        PipLocalBundling(root, python=failing).try_bundle(str(tmp_path / "asset"))


def test_hash_ignores_caches(tmp_path):
    root = _source_root(tmp_path)
    before = bundling.source_hash(root)
    (root / "fedcore" / "__pycache__").mkdir(exist_ok=True)
    (root / "fedcore" / "__pycache__" / "y.pyc").write_bytes(b"changed")
    assert bundling.source_hash(root) == before


@pytest.mark.parametrize(
    "changed", ["fedcore/layout.py", "lambdas/aggregator/constants.py"]
)
def test_hash_follows_sources(tmp_path, changed):
    root = _source_root(tmp_path)
    before = bundling.source_hash(root)
    with (root / changed).open("a") as handle:
        handle.write("\n# changed\n")
    assert bundling.source_hash(root) != before


def test_hash_follows_requirements(tmp_path):
    root = _source_root(tmp_path)
    before = bundling.source_hash(root)
    (root / "requirements-lambda.txt").write_text("numpy==2.4.5\n")
    assert bundling.source_hash(root) != before
