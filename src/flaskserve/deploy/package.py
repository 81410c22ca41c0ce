"""The flaskserve being deployed, as a wheel the instances install, and `--upload` to S3.

flaskserve is not on the public package index, so a stack that runs `pip install flaskserve`
cannot boot. `flaskserve deploy aws|docker` therefore writes a wheel of the flaskserve that is
running the command next to the files it writes: built by pip from the checkout when this
package is imported from one (`src/flaskserve` below a `pyproject.toml` naming flaskserve), or
packed from the installed package's files otherwise. The instances download it from the model
bucket, under `<prefix>.flaskserve/` (a folder the model repository ignores, which the
instance role already reads), and take its dependencies from the public index.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import flaskserve
from flaskserve import startup
from flaskserve.version import __version__

#: Where in the model prefix the wheel goes: a dot folder, which the S3 repository skips.
WHEEL_FOLDER = ".flaskserve/"
#: What the checkout must hold to build the wheel the way `pip install .` would.
_CHECKOUT_FILES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in")
_NOT_PACKAGED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


class PackageError(RuntimeError):
    """The wheel could not be built or uploaded; the message says what to do instead."""


def wheel_name() -> str:
    return f"flaskserve-{__version__}-py3-none-any.whl"


def checkout() -> Path | None:
    """The source checkout this flaskserve is imported from, if it is one."""
    package = Path(flaskserve.__file__).resolve().parent
    root = package.parent.parent
    pyproject = root / "pyproject.toml"
    if package.parent.name != "src" or not pyproject.is_file():
        return None
    return root if 'name = "flaskserve"' in pyproject.read_text(encoding="utf-8") else None


def build_wheel(out: Path) -> Path:
    """Write a wheel of the running flaskserve into `out`; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    root = checkout()
    return _wheel_from_checkout(root, out) if root else _wheel_from_installed(out)


def _wheel_from_checkout(root: Path, out: Path) -> Path:
    """`pip wheel --no-deps` on a copy of the checkout, so no build/ or .egg-info lands in it."""
    with tempfile.TemporaryDirectory(prefix="flaskserve-wheel-") as staging:
        source = Path(staging) / "source"
        shutil.copytree(root / "src", source / "src", ignore=_NOT_PACKAGED)
        for name in _CHECKOUT_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, source / name)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "-w", str(Path(staging) / "dist"), str(source)]
        built = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            raise PackageError(
                f"could not build a wheel of {root} ({' '.join(command[2:5])} failed: "
                f"{(built.stderr or built.stdout).strip()[-600:]}); pass --package with a "
                "requirement your instances can install instead"
            )
        (wheel,) = Path(staging, "dist").glob("flaskserve-*.whl")
        return Path(shutil.copy2(wheel, out / wheel_name()))


def _wheel_from_installed(out: Path) -> Path:
    """Pack the installed package's files (and its metadata) into a wheel again."""
    try:
        distribution = importlib.metadata.distribution("flaskserve")
    except importlib.metadata.PackageNotFoundError:
        raise PackageError(
            "flaskserve is neither a checkout nor an installed distribution here; pass "
            "--package with a requirement your instances can install"
        ) from None
    package = Path(flaskserve.__file__).resolve().parent
    info = f"flaskserve-{__version__}.dist-info"
    files: dict[str, bytes] = {
        path.relative_to(package.parent).as_posix(): path.read_bytes()
        for path in sorted(package.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    for name in ("METADATA", "entry_points.txt"):
        text = distribution.read_text(name)
        if text is not None:
            files[f"{info}/{name}"] = text.encode("utf-8")
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: flaskserve deploy\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    target = out / wheel_name()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as wheel:
        records = io.StringIO()
        writer = csv.writer(records, lineterminator="\n")
        for name, data in files.items():
            wheel.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            writer.writerow([name, f"sha256={digest.decode()}", len(data)])
        writer.writerow([f"{info}/RECORD", "", ""])
        wheel.writestr(f"{info}/RECORD", records.getvalue())
    return target


def repository_problem(folder: Path) -> str | None:
    """Why `folder` is not a model repository to upload, or None when it is one."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    return startup.repository_problem(folder)


def upload(
    bucket: str,
    prefix: str,
    wheel: Path | None,
    models: Path | None,
    echo: Callable[[str], None],
) -> None:
    """Put the wheel under `<prefix>.flaskserve/` and the repository's files under `prefix`,
    with the AWS credential chain (and `AWS_ENDPOINT_URL`, which boto3 reads itself)."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise PackageError("--upload needs boto3: pip install 'flaskserve[s3]'") from None
    uploads: list[tuple[Path, str]] = []
    if wheel is not None:
        uploads.append((wheel, f"{prefix}{WHEEL_FOLDER}{wheel.name}"))
    if models is not None:
        uploads += [
            (path, f"{prefix}{path.relative_to(models).as_posix()}")
            for path in sorted(models.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts
        ]
    client = boto3.client("s3")
    for path, key in uploads:
        try:
            client.upload_file(str(path), bucket, key)
        except (BotoCoreError, ClientError) as exc:
            raise PackageError(f"could not upload {path} to s3://{bucket}/{key}: {exc}") from None
        echo(f"uploaded {path} to s3://{bucket}/{key}")
