"""Which code made a result: the revision every record carries (run.json, metrics.json, a
converted `.pkl`, results.json, the experiment runner's stage records).

- als_det inside a git checkout (its folder tracked by the repository around it):
  `git:<commit>`, or `git:<commit>+dirty.<digest>` when the code differs from the commit: any
  change, staged or not, or an untracked file, under `als_det/` or `tools/`. The digest (12 hex
  digits of sha256 over each such file's path and content) tells two different edits of the same
  commit apart.
- elsewhere (an installed wheel, a copied tree): `sources:<digest>`, sha256 over the path and
  content of every file of the package (`__pycache__` left out).

Configs are not part of the revision: every record carries its full config and the runner
fingerprints a stage's config files already.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def code_revision() -> str:
    """This process's code revision (computed once)."""
    return revision_of(PACKAGE)


def revision_of(package: Path) -> str:
    """The revision of the als_det package folder `package` (and the `tools/` beside it)."""
    package = package.resolve()
    top = _git_top(package)
    if top is None:
        return f"sources:{_sources_digest(package)}"
    return _git_revision(top, (package, package.parent / "tools"))


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)


def _git_top(package: Path) -> Path | None:
    """The checkout's root when git tracks the package there, else None (why: logged)."""
    try:
        found = _git(package, "ls-files", "--full-name", "--", "__init__.py")
    except FileNotFoundError:
        logger.debug("no git program: the code revision is a digest of %s", package)
        return None
    if found.returncode != 0 or not found.stdout.strip():
        why = found.stderr.decode(errors="replace").strip()
        (logger.warning if why and "not a git repository" not in why else logger.debug)(
            "%s is not tracked by a git checkout (%s): the code revision is a digest of it",
            package,
            why or "untracked",
        )
        return None
    top = _git(package, "rev-parse", "--show-toplevel")
    return Path(top.stdout.decode().strip()).resolve() if top.returncode == 0 else None


def _git_revision(top: Path, code_folders: tuple[Path, ...]) -> str:
    head = _git(top, "rev-parse", "HEAD")
    if head.returncode != 0:
        raise RuntimeError(f"git rev-parse HEAD in {top}: {head.stderr.decode().strip()}")
    commit = head.stdout.decode().strip()
    folders = [str(f.relative_to(top)) for f in code_folders if f.is_relative_to(top)]
    status = _git(top, "status", "--porcelain", "-z", "--untracked-files=all", "--", *folders)
    if status.returncode != 0:
        raise RuntimeError(f"git status in {top}: {status.stderr.decode().strip()}")
    changed = _changed_paths(status.stdout)
    if not changed:
        return f"git:{commit}"
    h = hashlib.sha256()
    for rel in changed:
        h.update(rel.encode() + b"\0")
        path = top / rel
        h.update(path.read_bytes() if path.is_file() else b"<deleted>")
    return f"git:{commit}+dirty.{h.hexdigest()[:12]}"


def _changed_paths(porcelain_z: bytes) -> list[str]:
    """The paths of `git status --porcelain -z`: entries `XY path`, a rename or copy followed by
    its origin as an entry of its own."""
    entries = porcelain_z.decode(errors="surrogateescape").split("\0")
    paths, i = [], 0
    while i < len(entries):
        entry = entries[i]
        if entry:
            paths.append(entry[3:])
            if entry[0] in "RC":
                i += 1  # the origin path
        i += 1
    return sorted(paths)


def _sources_digest(package: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.is_file()):
        rel = path.relative_to(package)
        if "__pycache__" in rel.parts:
            continue
        h.update(rel.as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()
