"""Build an offline wheelhouse for a GPU machine that has torch but no network.

The rented GPU machines have torch, torchvision, numpy, pillow, opencv, matplotlib, tqdm, pyyaml,
tabulate, cloudpickle, tensorboard, portalocker and pytest, but none of detectron2's other
dependencies and no network. This script collects, for a target Python version, exactly the
missing wheels at the versions installed (and tested) here:

- binary ones (pycocotools) with `pip download --only-binary=:all: --platform manylinux...`;
- pure-Python ones (fvcore, iopath, yacs, submitit, ...) with `pip wheel --no-deps` (PyPI's
  wheel, or one built here from the sdist); each must come out platform-independent;
- the patched pure-Python detectron2 (scripts/install_detectron2.py's download + patch);
- als_det itself, built from the working tree.

It writes OUT_DIR/wheelhouse.json (target Python, wheels, sizes, sha256) and prints the total size.
`benchmarks/gpu_check.sh` installs the result with `pip install --no-index --no-deps`.

Usage: python benchmarks/build_wheelhouse.py [--python-version 3.12] [OUT_DIR]   (default
                                                                                 wheelhouse/)
       python benchmarks/build_wheelhouse.py --check-fresh [OUT_DIR]   (als_det wheel vs the tree)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # als_det.io for the manifest, whichever interpreter runs this

from als_det.io import atomic_write_json, sha256_file  # noqa: E402

# Distribution names the GPU machine lacks; versions are taken from this environment.
BINARY = ["pycocotools"]
PURE = [
    "fvcore",
    "iopath",
    "yacs",
    "termcolor",
    "omegaconf",
    "hydra-core",
    "antlr4-python3-runtime",
    "submitit",
]
MANYLINUX = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
MAX_MIB = 60
# Source files of the als_det distribution (copied so stale build/ folders never leak into it).
ALS_DET_SOURCES = ["pyproject.toml", "README.md", "LICENSE", "als_det"]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def _install_detectron2_module():
    """scripts/install_detectron2.py as a module (scripts/ is not a package)."""
    path = REPO / "scripts" / "install_detectron2.py"
    spec = importlib.util.spec_from_file_location("install_detectron2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pinned(name: str) -> str:
    """`name==version` as installed in this environment (the tested version)."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"{name} is not installed in {sys.prefix}; run `make setup` first"
        ) from None


def download_binary(requirement: str, python_version: str, out: Path) -> None:
    platforms = [a for p in MANYLINUX for a in ("--platform", p)]
    _run(
        _pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(out),
            requirement,
        )
    )


def wheel_pure(requirement: str, out: Path) -> None:
    _run(_pip("wheel", "--no-deps", "-w", str(out), requirement))


def build_als_det(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="als-det-src-") as tmp:
        for rel in ALS_DET_SOURCES:
            src = REPO / rel
            if src.is_dir():
                shutil.copytree(src, Path(tmp) / rel, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.exists():
                shutil.copy2(src, Path(tmp) / rel)
        _run(_pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), tmp))


def source_digest(root: Path = REPO) -> str:
    """sha256 over the als_det sources the wheel is built from (paths and contents)."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml"] + sorted((root / "als_det").rglob("*.py"))
    for file in files:
        h.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()


def check_fresh(out: Path) -> None:
    """Stop if OUT's als_det wheel was built from other sources than this tree's."""
    built = json.loads((out / "wheelhouse.json").read_text()).get("als_det_source_sha256")
    if built != source_digest():
        raise SystemExit(
            f"{out}: its als_det wheel was built from other sources than this tree's "
            f"als_det/ (changed since); rebuild: python benchmarks/build_wheelhouse.py "
            f"--python-version X.Y {out}"
        )
    print(f"{out}: als_det wheel matches this tree's sources")


def check_pure(wheels: list[Path], binary_prefixes: tuple[str, ...]) -> None:
    for wheel in wheels:
        if wheel.name.lower().startswith(binary_prefixes):
            continue
        if not wheel.name.endswith("-none-any.whl"):
            raise SystemExit(
                f"{wheel.name} is not platform-independent; it would not install on the "
                "GPU machine. Add it to BINARY in benchmarks/build_wheelhouse.py"
            )


def build(out: Path, python_version: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.whl")) + [out / "wheelhouse.json"]:
        old.unlink(missing_ok=True)
    for name in BINARY:
        download_binary(pinned(name), python_version, out)
    for name in PURE:
        wheel_pure(pinned(name), out)
    d2 = _install_detectron2_module()
    d2.build_wheel(REPO / "build" / "detectron2", out)
    build_als_det(out)
    wheels = sorted(out.glob("*.whl"))
    check_pure(wheels, tuple(n.replace("-", "_").lower() for n in BINARY))
    total = sum(w.stat().st_size for w in wheels)
    manifest = {
        "python_version": python_version,
        "built_with": sys.version.split()[0],
        "als_det_source_sha256": source_digest(),
        "total_bytes": total,
        "wheels": [
            {"file": w.name, "bytes": w.stat().st_size, "sha256": sha256_file(w)} for w in wheels
        ],
    }
    atomic_write_json(out / "wheelhouse.json", manifest)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(REPO / "wheelhouse"), help="output folder")
    parser.add_argument(
        "--python-version",
        default="3.12",
        help="target interpreter, e.g. 3.12 (the GPU machine) or 3.11 (this machine)",
    )
    parser.add_argument(
        "--check-fresh",
        action="store_true",
        help="build nothing; fail if OUT's als_det wheel is older than the tree's sources",
    )
    args = parser.parse_args()
    if args.check_fresh:
        check_fresh(Path(args.out))
        return
    manifest = build(Path(args.out), args.python_version)
    for w in manifest["wheels"]:
        print(f"  {w['bytes'] / 2**20:7.2f} MiB  {w['file']}")
    mib = manifest["total_bytes"] / 2**20
    print(
        f"wheelhouse {args.out}: {len(manifest['wheels'])} wheels, {mib:.2f} MiB "
        f"(python {args.python_version})"
    )
    if mib > MAX_MIB:
        raise SystemExit(
            f"wheelhouse is {mib:.1f} MiB > {MAX_MIB} MiB: too big to travel with the tree"
        )


if __name__ == "__main__":
    main()
