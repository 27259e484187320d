"""Local bundling of the aggregator Lambda asset, without Docker.

``pip`` downloads manylinux wheels for the Lambda runtime's Python version into the
asset directory, and the repository's ``fedcore`` and ``lambdas`` packages are copied
beside them. The Docker image given to :class:`aws_cdk.BundlingOptions` is only a
required placeholder: :meth:`PipLocalBundling.try_bundle` always either bundles or
raises, so CDK never falls back to Docker.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

logger = logging.getLogger(__name__)

# The runtime and the wheels pip selects must agree: numpy ships compiled extensions
# for one CPython minor version. PYTHON_3_14 is the newest Python runtime aws-cdk-lib
# 2.275.0 defines, so cdk-nag's AwsSolutions-L1 passes without acknowledgment.
LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_14
LAMBDA_ARCHITECTURE = lambda_.Architecture.X86_64
PYTHON_VERSION = "3.14"
# Lambda's Python 3.12+ runtimes run on Amazon Linux 2023 (glibc 2.34). With the
# older manylinux2014 tag alone, pip falls back to an older numpy than the pinned one.
PIP_PLATFORM = "manylinux_2_28_x86_64"

SOURCE_PACKAGES = ("fedcore", "lambdas")
REQUIREMENTS_FILE = "requirements-lambda.txt"
_IGNORED = ("__pycache__", "*.pyc", "tests", "test_*.py", "conftest.py")
# Directories the Lambda never imports: test suites and caches anywhere, and the
# console scripts pip writes to bin/. For numpy 2.4.6 that saves about 6 MB.
_STRIPPED_DIRECTORIES = ("tests", "__pycache__")
_STRIPPED_TOP_LEVEL = ("bin",)


class BundlingError(RuntimeError):
    """The aggregator asset could not be built."""


def pip_install_command(
    requirements: Path, output_dir: Path, *, python: str = sys.executable
) -> list[str]:
    """Build the ``pip install`` command that fetches Lambda-compatible wheels.

    Parameters
    ----------
    requirements
        Requirements file with the runtime packages, pinned.
    output_dir
        Directory that becomes the root of the Lambda asset.
    python
        Interpreter whose ``pip`` runs; the local one by default.
    """
    return [
        python,
        "-m",
        "pip",
        "install",
        "--platform",
        PIP_PLATFORM,
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--only-binary=:all:",
        "--no-compile",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(output_dir),
        "--requirement",
        str(requirements),
    ]


def _source_files(source_root: Path) -> Iterator[Path]:
    """Yield the files copied into the asset, in a stable order."""
    for package in SOURCE_PACKAGES:
        for path in sorted((source_root / package).rglob("*")):
            relative = path.relative_to(source_root)
            if path.is_file() and not any(
                part == pattern or Path(part).match(pattern)
                for part in relative.parts
                for pattern in _IGNORED
            ):
                yield path


def source_hash(source_root: Path) -> str:
    """Hash everything that determines the asset's content.

    The hash covers the pip target (Python version, platform), the requirements file
    and every copied source file, so CDK never has to fingerprint the whole repository
    (which contains the virtual environment).
    """
    digest = hashlib.sha256()
    digest.update(f"{PYTHON_VERSION}|{PIP_PLATFORM}\n".encode())
    requirements = source_root / REQUIREMENTS_FILE
    digest.update(requirements.read_bytes())
    for path in _source_files(source_root):
        digest.update(str(path.relative_to(source_root).as_posix()).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _strip(output_dir: Path, names: Sequence[str]) -> None:
    """Delete directories the Lambda does not import from the installed packages."""
    for name in names:
        for path in sorted(output_dir.rglob(name), reverse=True):
            if path.is_dir():
                shutil.rmtree(path)


@jsii.implements(cdk.ILocalBundling)
class PipLocalBundling:
    """Build the aggregator asset with the local ``pip``, for any host platform.

    Parameters
    ----------
    source_root
        Repository root containing ``fedcore/``, ``lambdas/`` and the requirements
        file.
    python
        Interpreter whose ``pip`` downloads the wheels.
    """

    def __init__(self, source_root: Path, *, python: str = sys.executable) -> None:
        self._source_root = source_root
        self._python = python

    def try_bundle(self, output_dir: str, options: Any = None) -> bool:
        """Install the wheels and copy the packages into ``output_dir``.

        Returns
        -------
        bool
            Always True: a failure raises instead, because falling back to Docker
            cannot work where this project builds.

        Raises
        ------
        BundlingError
            If pip fails or a source package is missing.
        """
        del options  # Everything this bundler needs is fixed at construction.
        output = Path(output_dir)
        requirements = self._source_root / REQUIREMENTS_FILE
        command = pip_install_command(requirements, output, python=self._python)
        logger.info("bundling the aggregator: %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BundlingError(
                f"pip install of {requirements} for Python {PYTHON_VERSION} on "
                f"{PIP_PLATFORM} failed with exit code {result.returncode}: "
                f"{result.stderr.strip()}. Check the network access to PyPI and that "
                "every pinned package has a wheel for that platform."
            )
        _strip(output, _STRIPPED_DIRECTORIES)
        for name in _STRIPPED_TOP_LEVEL:
            shutil.rmtree(output / name, ignore_errors=True)
        for package in SOURCE_PACKAGES:
            source = self._source_root / package
            if not source.is_dir():
                raise BundlingError(
                    f"source package {source} not found: expected the repository "
                    "root as source_root"
                )
            shutil.copytree(
                source, output / package, ignore=shutil.ignore_patterns(*_IGNORED)
            )
        return True


def aggregator_code(source_root: Path) -> lambda_.Code:
    """Return the aggregator's Lambda code, bundled locally at synthesis.

    Tests skip the bundling with the context ``aws:cdk:bundling-stacks = []``; CDK
    then stages nothing and the hash below still names the asset.
    """
    return lambda_.Code.from_asset(
        str(source_root),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=source_hash(source_root),
        bundling=cdk.BundlingOptions(
            # A placeholder CDK requires; local bundling never falls back to it.
            image=cdk.DockerImage.from_registry("public.ecr.aws/lambda/python:3.14"),
            local=PipLocalBundling(source_root),
        ),
    )
