"""Find and load the project's real datasets (``../shared/datasets``; see its README).

Contract:

- ``dataset_roots()`` lists the folders searched, in order: ``$DRIFT_SHARED_DATASETS``; ``../shared/datasets``
  beside the repository (the parent of this package's folder), then beside the current directory;
  then ``$DRIFT_DATASETS`` or ``~/.cache/drift/datasets`` (where on-demand builds go).
- ``find_dataset(name)`` returns the first ``<root>/<name>`` that holds a complete copy (``base.npy``,
  ``queries.npy``, ``gt_l2.npy``, ``meta.json``). A name that is itself a path to such a folder is
  accepted as is. ``glove-6b-50d`` is built on demand into the last root by running the shared
  ``get_glove.py`` with a Python interpreter (it downloads a PyPI package; about a minute). Anything else
  that is not found raises ``DatasetNotFoundError`` naming every folder looked in.
- ``load_dataset(name)`` returns a frozen ``Dataset``: ``base`` and ``queries`` are always C-contiguous
  float32 (the files may store uint8 or float16), ``gt`` int32 of shape ``(nq, 100)`` (exact L2
  neighbours, ties to the lower index), ``gt_dist`` float32 (Euclidean, not squared), ``meta`` the parsed
  ``meta.json``, ``labels`` / ``query_labels`` when the dataset has them. Files are only read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_FILES = ("base.npy", "queries.npy", "gt_l2.npy", "meta.json")
BUILDERS = {"glove-6b-50d": "get_glove.py"}  # datasets built on demand: name -> script in shared/datasets
_REPO_ROOT = Path(__file__).resolve().parent.parent


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the searched folders (and cannot be built on demand)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset, fully loaded in memory (arrays are not compared by ``==``)."""

    name: str
    base: np.ndarray  # (n, d) float32
    queries: np.ndarray  # (nq, d) float32
    gt: np.ndarray  # (nq, 100) int32: exact L2 neighbours in base, nearest first
    gt_dist: np.ndarray  # (nq, 100) float32: their Euclidean distances
    meta: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None  # (n,) class / year of each base vector, if any
    query_labels: np.ndarray | None = None  # (nq,)
    path: Path | None = None  # the folder it was read from

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    @property
    def nq(self) -> int:
        return int(self.queries.shape[0])

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, n={self.n}, dim={self.dim}, nq={self.nq}, path={self.path})"


def build_root() -> Path:
    """Where datasets built on demand go: ``$DRIFT_DATASETS`` or ``~/.cache/drift/datasets``."""
    env = os.environ.get("DRIFT_DATASETS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "drift" / "datasets"


def shared_roots() -> list[Path]:
    """The read-only shared dataset folders that are searched, in order (existing or not)."""
    roots: list[Path] = []
    env = os.environ.get("DRIFT_SHARED_DATASETS")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(_REPO_ROOT.parent / "shared" / "datasets")
    roots.append(Path.cwd().parent / "shared" / "datasets")
    return _dedupe(roots)


def dataset_roots() -> list[Path]:
    """Every folder searched by ``find_dataset``, in order."""
    return _dedupe([*shared_roots(), build_root()])


def _dedupe(paths: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    out: list[Path] = []
    for p in paths:
        key = p.resolve() if p.exists() else p.absolute()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in REQUIRED_FILES)


def find_dataset(name: str, *, build: bool = True) -> Path:
    """Return the folder holding dataset ``name``; build it on demand when it has a builder.

    Raises ``DatasetNotFoundError`` (naming the folders searched) when it is nowhere to be found.
    """
    as_path = Path(name).expanduser()
    if (os.sep in name or as_path.is_absolute()) and _complete(as_path):
        return as_path
    roots = dataset_roots()
    for root in roots:
        if _complete(root / name):
            return root / name
    script = _builder_script(name)
    if build and script is not None:
        out = build_root() / name
        _run_builder(script, build_root())
        if _complete(out):
            return out
        raise DatasetNotFoundError(f"building dataset {name!r} with {script} did not produce {out}")
    looked = "\n  ".join(str(r / name) for r in roots)
    hint = ""
    if script is not None:
        hint = f"\n(not built yet: {script} builds it on demand, into {build_root()})"
    elif name in BUILDERS:
        hint = f"\n(it is built on demand by {BUILDERS[name]}, which was not found in any shared folder)"
    raise DatasetNotFoundError(
        f"dataset {name!r} not found; looked in:\n  {looked}{hint}\n"
        "Set DRIFT_SHARED_DATASETS to the shared datasets folder, or pass a path to the dataset folder."
    )


def _builder_script(name: str) -> Path | None:
    script_name = BUILDERS.get(name)
    if script_name is None:
        return None
    for root in shared_roots():
        if (root / script_name).is_file():
            return root / script_name
    return None


def _python() -> str:
    """A Python interpreter to run a builder with: this one, unless embedded (e.g. in PostgreSQL)."""
    exe = sys.executable or ""
    if Path(exe).name.startswith("python") and os.access(exe, os.X_OK):
        return exe
    return shutil.which("python3") or "python3"


def _run_builder(script: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"building dataset with {script} into {root} (downloads a PyPI package; about a minute)",
        file=sys.stderr,
        flush=True,
    )
    try:
        subprocess.run([_python(), str(script), str(root)], check=True, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        raise DatasetNotFoundError(f"{script} failed with exit code {exc.returncode}") from exc


def _load(path: Path, dtype: type | None = None) -> np.ndarray:
    arr = np.load(path, allow_pickle=False)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return np.ascontiguousarray(arr)


def load_dataset(name: str, *, build: bool = True) -> Dataset:
    """Load dataset ``name`` (a name from the shared README, or a path to a dataset folder)."""
    folder = find_dataset(name, build=build)
    meta = json.loads((folder / "meta.json").read_text())
    base = _load(folder / "base.npy", np.float32)
    queries = _load(folder / "queries.npy", np.float32)
    gt = _load(folder / "gt_l2.npy", np.int32)
    dist_file = folder / "gt_l2_dist.npy"
    gt_dist = _load(dist_file, np.float32) if dist_file.is_file() else np.full(gt.shape, np.nan, np.float32)
    if base.ndim != 2 or queries.ndim != 2 or queries.shape[1] != base.shape[1]:
        raise ValueError(f"{folder}: base {base.shape} and queries {queries.shape} do not match")
    if gt.shape[0] != queries.shape[0] or gt_dist.shape != gt.shape:
        raise ValueError(f"{folder}: ground truth {gt.shape} does not match {queries.shape[0]} queries")
    labels = _load(folder / "labels.npy") if (folder / "labels.npy").is_file() else None
    qlabels = _load(folder / "query_labels.npy") if (folder / "query_labels.npy").is_file() else None
    return Dataset(
        name=str(meta.get("name", folder.name)),
        base=base,
        queries=queries,
        gt=gt,
        gt_dist=gt_dist,
        meta=meta,
        labels=labels,
        query_labels=qlabels,
        path=folder,
    )


def recall_at_k(found: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """Mean recall@k of ``found`` ids ``(m, >=k)`` against ground truth ``(m, >=k)``: per query
    ``|set(found[:k]) ∩ set(gt[:k])| / k``. Negative ids (padding) never match, and an id found twice counts
    once. The one recall helper of the demo, the benchmarks and the tests."""
    found = np.asarray(found)[:, :k]
    truth = np.asarray(gt)[:, :k]
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / float(truth.shape[0] * k) if truth.size else 0.0


def pad_ids(rows: Sequence[Sequence[int] | np.ndarray], k: int) -> np.ndarray:
    """Per-query id lists (each of any length) as an ``(m, k)`` int64 array: the first k ids, -1 padding."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        r = np.asarray(r, dtype=np.int64).ravel()[:k]
        out[i, : len(r)] = r
    return out


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Exact L2 top-k ids by brute force in float64, ties to the lower id (as the datasets' ground truth),
    over ``rows`` of ``base`` when given; ``(len(queries), min(k, n))`` int64."""
    ids = np.arange(len(base)) if rows is None else np.asarray(rows)
    sub = base[ids].astype(np.float64)
    k = min(k, len(ids))
    out = np.empty((len(queries), k), dtype=np.int64)
    for i, q in enumerate(np.asarray(queries, dtype=np.float64)):
        d = ((sub - q) ** 2).sum(axis=1)
        top = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
        out[i] = ids[top[np.lexsort((ids[top], d[top]))]]
    return out
