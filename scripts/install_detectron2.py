"""Install detectron2 into the running interpreter's environment, unless it is already importable.

detectron2 is not on PyPI under its own name. `pb1-detectron2==0.6` is the upstream v0.6 release's
Python code and model-zoo configs without the C++ sources. This script downloads that sdist,
checks its sha256, applies a small list of checked patches (each must apply, or the script
stops), and installs the patched tree. The result is a pure-Python detectron2 whose Faster R-CNN,
ROIAlign and NMS run on torchvision ops (CPU and CUDA). It lacks the C++-only ops: rotated boxes,
deformable convolution and the fast C++ COCOeval (pycocotools' COCOeval is used instead).

Usage: python scripts/install_detectron2.py [--cache DIR] [--force] [--wheel-dir DIR]
(--wheel-dir builds the patched wheel into DIR instead of installing it; used by
benchmarks/build_wheelhouse.sh for machines without network.)
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

_MISSING_EXTENSION = '''"""Stand-in for detectron2._C in als_det's pure-Python build: any use \
names what is missing."""


class _MissingExtension:
    def __getattr__(self, name):
        raise RuntimeError(
            f"detectron2._C.{name} needs detectron2's C++/CUDA extension, which this pure-Python "
            "build (als_det scripts/install_detectron2.py) does not have. Rotated boxes and "
            "deformable convolution need upstream detectron2 built from source; see als_det's \
README."
        )


_C = _MissingExtension()
'''

_LAZY_C = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # als_det pure-Python build: C++ ops fail only when used\n"
    "    from detectron2._missing_extension import _C\n"
)

# (file, pattern, replacement, is_regex). Every pattern must match at least once.
PATCHES: list[tuple[str, str, str, bool]] = [
    # No C++ sources in the sdist: build no extension.
    ("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],", False),
    # The configs already sit under detectron2/model_zoo/configs; the original glob looks elsewhere.
    (
        "setup.py",
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/*.yaml", '
        '"configs/**/*.yaml", "configs/**/*.py"]},',
        False,
    ),
    # Three layers import _C at module level; make that lazy.
    ("detectron2/layers/rotated_boxes.py", "from detectron2 import _C\n", _LAZY_C, False),
    ("detectron2/layers/deform_conv.py", "from detectron2 import _C\n", _LAZY_C, False),
    ("detectron2/layers/roi_align_rotated.py", "from detectron2 import _C\n", _LAZY_C, False),
    # Fast C++ COCOeval is missing: use pycocotools' COCOeval, as upstream later did.
    (
        "detectron2/evaluation/coco_evaluation.py",
        "from detectron2.evaluation.fast_eval_api import COCOeval_opt\n",
        "try:\n    from detectron2.evaluation.fast_eval_api import COCOeval_opt\n"
        "except ImportError:  # no C++ extension: pycocotools' COCOeval\n    COCOeval_opt = None\n",
        False,
    ),
    (
        "detectron2/evaluation/coco_evaluation.py",
        "coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)",
        "coco_eval = (COCOeval_opt if use_fast_impl and COCOeval_opt is not None else COCOeval)"
        "(coco_gt, coco_dt, iou_type)",
        False,
    ),
    # Pillow 10 removed Image.LINEAR.
    ("detectron2/data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR", False),
    # numpy 2: copy=False means "never copy".
    (
        "detectron2/layers/mask_ops.py",
        "mask = np.array(mask, copy=False)",
        "mask = np.asarray(mask)",
        False,
    ),
    # setuptools >= 81 has no pkg_resources.
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "", False),
    (
        "detectron2/model_zoo/model_zoo.py",
        r'pkg_resources\.resource_filename\(\s*"detectron2\.model_zoo",\s*'
        r'os\.path\.join\("configs", config_path\)\s*\)',
        'os.path.join(os.path.dirname(__file__), "configs", config_path)',
        True,
    ),
]

# numpy 1.24 removed the aliases np.bool/int/float/str/object; applied to every file that has them.
_NP_ALIAS = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?![_\d])")


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def detectron2_importable() -> bool:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        return False
    return True


def fetch_sdist(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / SDIST_FILE
    if not path.exists():
        # Its setup.py imports torch while pip reads metadata, hence --no-build-isolation.
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-build-isolation",
                "--no-binary",
                ":all:",
                SDIST,
                "-d",
                str(cache),
            ]
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} != expected {SDIST_SHA256}; refusing to install")
    return path


def patch_tree(root: Path) -> None:
    for rel, pattern, replacement, is_regex in PATCHES:
        file = root / rel
        text = file.read_text()
        if is_regex:
            new, count = re.subn(pattern, replacement, text)
        else:
            count = text.count(pattern)
            new = text.replace(pattern, replacement)
        if count == 0:
            raise SystemExit(f"patch no longer applies: {rel}: {pattern!r} not found")
        file.write_text(new)
    (root / "detectron2" / "_missing_extension.py").write_text(_MISSING_EXTENSION)
    aliased = 0
    for file in (root / "detectron2").rglob("*.py"):
        text = file.read_text()
        new, count = _NP_ALIAS.subn(lambda m: m.group(1), text)
        if count:
            file.write_text(new)
            aliased += count
    if aliased == 0:
        raise SystemExit("patch no longer applies: no numpy aliases found in the sdist")
    print(f"patched {len(PATCHES)} places and {aliased} numpy aliases", flush=True)


def check_installed() -> None:
    """Run in a fresh interpreter so the just-installed package is the one imported."""
    code = (
        "import os, detectron2, detectron2.layers, detectron2.evaluation, detectron2.modeling\n"
        "from detectron2 import model_zoo\n"
        "p = model_zoo.get_config_file('COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml')\n"
        "assert os.path.exists(p), p\n"
        "print('detectron2', detectron2.__version__, 'from', "
        "os.path.dirname(detectron2.__file__))\n"
    )
    _run([sys.executable, "-c", code])


def patched_tree(sdist: Path, tmp: Path) -> Path:
    """Unpack `sdist` into `tmp` and patch it; returns the source root."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
    root = tmp / SDIST_FILE.removesuffix(".tar.gz")
    patch_tree(root)
    shutil.rmtree(root / "pb1_detectron2.egg-info", ignore_errors=True)
    return root


def build_wheel(cache: Path, wheel_dir: Path) -> Path:
    """Build the patched pure-Python detectron2 wheel into `wheel_dir`; returns its path."""
    sdist = fetch_sdist(cache)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    before = set(wheel_dir.glob("*.whl"))
    with tempfile.TemporaryDirectory(prefix="d2-") as tmp:
        root = patched_tree(sdist, Path(tmp))
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-build-isolation",
                "--no-deps",
                "--no-cache-dir",
                "-w",
                str(wheel_dir),
                str(root),
            ]
        )
    built = [w for w in wheel_dir.glob("*detectron2*.whl") if w not in before] or sorted(
        wheel_dir.glob("*detectron2*.whl")
    )
    if not built:
        raise SystemExit(f"pip wheel produced no detectron2 wheel in {wheel_dir}")
    return built[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="build/detectron2", help="where the sdist is kept")
    parser.add_argument("--force", action="store_true", help="reinstall even if importable")
    parser.add_argument(
        "--wheel-dir", default="", help="build a wheel into this folder; install nothing"
    )
    args = parser.parse_args()
    if args.wheel_dir:
        print(f"built {build_wheel(Path(args.cache), Path(args.wheel_dir))}")
        return
    if detectron2_importable() and not args.force:
        import detectron2

        print(
            f"detectron2 {detectron2.__version__} already importable "
            f"({Path(detectron2.__file__).parent}); keeping it"
        )
        return
    sdist = fetch_sdist(Path(args.cache))
    with tempfile.TemporaryDirectory(prefix="d2-") as tmp:
        root = patched_tree(sdist, Path(tmp))
        # Dependencies come from the project's own requirements (pinned by constraints.txt).
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-build-isolation",
                "--no-deps",
                "--no-cache-dir",
                str(root),
            ]
        )
    check_installed()


if __name__ == "__main__":
    main()
