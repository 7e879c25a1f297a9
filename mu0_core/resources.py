"""Where the package's resources live: checkpoints/, config/ (graph YAMLs, robots/, sim/, rviz/),
launch/ — in the source tree when the code runs from it, in the installed share directory
(`<prefix>/share/mu0`, what `colcon build` and `pip install` write) when it runs from an install.

    package_root()                 the directory that holds config/ and checkpoints/
    resolve("checkpoints/mu0_small")   an existing path: as given (absolute, or relative to the
                                   working directory), else under package_root(); else the path
                                   as given (callers report "not found" with the name they got)

One rule for every node and tool, so `ros2 launch` from any directory, `mu0 run` and the tests
resolve the same file. No ROS import: the share directory is found from where this module is
installed (`<prefix>/lib/pythonX.Y/site-packages/mu0_core` -> `<prefix>/share/mu0`), and only
then through the ament index (`ament_index_python`, when importable).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

PACKAGE = "mu0"
ENV_ROOT = "MU0_ROOT"       # optional override: a directory holding config/ and checkpoints/
_MARKERS = ("config", "package.xml")


def _is_root(path: Path) -> bool:
    return all((path / marker).exists() for marker in _MARKERS)


def source_root() -> Path | None:
    """The source checkout this code runs from (also under `colcon build --symlink-install` and an
    editable pip install), or None when it runs from an install."""
    root = Path(__file__).resolve().parent.parent
    return root if _is_root(root) else None


def _share_from_install() -> Path | None:
    here = Path(__file__).resolve().parent.parent          # .../site-packages (or dist-packages)
    for prefix in (here.parent.parent.parent, here.parent.parent):   # <prefix>/lib/pythonX.Y/site-packages, <prefix>/lib/site-packages
        share = prefix / "share" / PACKAGE
        if _is_root(share):
            return share
    return None


def _share_from_ament_index() -> Path | None:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        share = Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, ValueError, LookupError):
        return None
    return share if _is_root(share) else None


@lru_cache(maxsize=None)
def _root(env_value: str | None) -> Path:
    if env_value:
        return Path(env_value).resolve()
    return source_root() or _share_from_install() or _share_from_ament_index() or \
        Path(__file__).resolve().parent.parent


def package_root() -> Path:
    """The directory holding config/, checkpoints/ and launch/: $MU0_ROOT if set, else the source
    tree this code runs from, else the installed share/mu0."""
    return _root(os.environ.get(ENV_ROOT) or None)


def share_path(relative: str | os.PathLike) -> Path:
    """`relative` under package_root() (exists or not)."""
    return package_root() / relative


def resolve(path: str | os.PathLike) -> Path:
    """An existing file or directory for `path`: absolute or relative to the working directory if
    it exists there, else relative to package_root(); if neither exists, `path` unchanged (so the
    caller's error names what the user wrote)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_absolute() or p.exists():
        return p
    candidate = package_root() / p
    return candidate if candidate.exists() else p
