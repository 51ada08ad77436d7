"""Find, verify and load Fashion-MNIST once into uint8 tensors; stratified splits.

Files are looked up (``.gz`` or uncompressed) in: ``--data-dir``/``FMNIST_DATA_DIR``,
the user cache, and Debian's ``dataset-fashion-mnist`` directory. The decompressed
contents are checked against the official SHA-256 so a corrupt or truncated file is
an error naming that file, never a silently wrong dataset. Parsing uses
torchvision's IDX readers, once: the parsed tensors are kept in the cache (<cache>/parsed/), so a
later process neither parses nor imports torchvision (~0.9 s of a worker's start-up).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from ..core.config import cache_root
from ..core.errors import DataError
from ..core.files import write_whole

# name -> (SHA-256 of the decompressed file, size in bytes)
FILES: dict[str, tuple[str, int]] = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47_040_016),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60_008),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7_840_016),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10_008),
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian), "
    "or put the four Fashion-MNIST files in a folder and pass --data-dir / set FMNIST_DATA_DIR"
)


def cache_dir() -> Path:
    """Where downloads go (torchvision's FashionMNIST layout); searched for the files."""
    return cache_root() / "FashionMNIST" / "raw"


def search_dirs(data_dir: Path | None = None) -> list[Path]:
    # The CLI passes FMNIST_DATA_DIR as --data-dir; library callers (benchmarks) get it here.
    chosen = data_dir or os.environ.get("FMNIST_DATA_DIR")
    dirs = [Path(chosen).expanduser()] if chosen else []
    return [*dirs, cache_dir(), DEBIAN_DIR]


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Location:
    """One searched folder and which of the four files it holds."""

    directory: Path
    files: dict[str, Path | None]

    @property
    def complete(self) -> bool:
        return all(self.files.values())


def survey(data_dir: Path | None = None) -> list[Location]:
    return [Location(d, {name: _find(d, name) for name in FILES}) for d in search_dirs(data_dir)]


def chosen(data_dir: Path | None = None) -> bool:
    """Whether the user chose a folder (``--data-dir``, FMNIST_DATA_DIR): then only it is used."""
    return bool(data_dir or os.environ.get("FMNIST_DATA_DIR"))


def locate(data_dir: Path | None = None) -> Location | None:
    """The folder the user chose if it holds all four files, else (none chosen) the first searched
    folder that does; or None. A chosen folder is never silently replaced by another."""
    searched = survey(data_dir)
    return next((loc for loc in searched[: 1 if chosen(data_dir) else None] if loc.complete), None)


def _verified_raw(path: Path, name: str, expected: str, size: int) -> Path:
    """An uncompressed, SHA-256-verified copy of ``path`` that torchvision's reader can open.

    A ``.gz`` is decompressed once into a content-addressed cache folder; the copy is reused
    only while its source file is unchanged (same path, size and mtime).
    """
    if path.suffix != ".gz":
        _check(path, path.read_bytes(), expected, size)
        return path
    target = cache_dir().parent.parent / "decompressed" / expected[:16] / name
    stamp = target.with_name(f"{name}.source")
    st = path.stat()
    source = f"{path.resolve()} {st.st_size} {st.st_mtime_ns}"
    if target.is_file() and stamp.is_file() and stamp.read_text() == source:
        _check(target, target.read_bytes(), expected, size)  # ~0.15 s for all four: cheap insurance
        return target
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is corrupt or truncated ({e}); {HOW_TO_GET}") from None
    _check(path, data, expected, size)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_whole(target, lambda tmp: tmp.write_bytes(data))  # a crash never leaves half a copy under the real name
    stamp.write_text(source)
    return target


def _check(path: Path, data: bytes, expected: str, size: int) -> None:
    if len(data) != size:
        raise DataError(
            f"{path} is truncated or not Fashion-MNIST: {len(data):,} bytes decompressed, "
            f"expected {size:,}; {HOW_TO_GET}"
        )
    if hashlib.sha256(data).hexdigest() != expected:
        raise DataError(f"{path} is corrupt: its SHA-256 does not match the official file; {HOW_TO_GET}")


@dataclass(frozen=True)
class FashionMNIST:
    """The whole dataset as CPU tensors: images (N, 28, 28) uint8, labels (N,) int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: Path


def download(root: Path | None = None) -> None:
    """Fetch the files with torchvision's mirrors into the cache."""
    from torchvision.datasets import FashionMNIST as _TorchvisionFashionMNIST

    root = root or cache_dir().parent.parent
    try:
        _TorchvisionFashionMNIST(root=str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise DataError(f"Fashion-MNIST not found and the download failed ({type(e).__name__}); {HOW_TO_GET}") from None


def find(data_dir: Path | None = None, *, allow_download: bool = True) -> Location:
    """The folder holding all four files (downloaded first if allowed and none does), or a
    one-line ``DataError``; nothing is read or parsed. A folder chosen (``data_dir``,
    FMNIST_DATA_DIR) must hold them: it is never silently replaced by another."""
    location = locate(data_dir)
    if location is None and chosen(data_dir):
        folder = survey(data_dir)[0]
        missing = ", ".join(name for name, path in folder.files.items() if path is None)
        raise DataError(
            f"{folder.directory} holds no Fashion-MNIST (missing {missing}); put the four files (or their .gz) there, "
            "or leave out --data-dir / FMNIST_DATA_DIR to use the cache or Debian's dataset-fashion-mnist"
        )
    if location is None and allow_download:
        download()
        location = locate(data_dir)
    if location is None:
        searched = ", ".join(str(d) for d in search_dirs(data_dir))
        raise DataError(f"Fashion-MNIST not found (searched {searched}); {HOW_TO_GET}")
    return location


def verified_files(
    data_dir: Path | None = None,
    *,
    allow_download: bool = True,
    checksums: dict[str, tuple[str, int]] = FILES,
) -> tuple[Location, dict[str, Path]]:
    """The folder used (``find``) and an uncompressed, verified path for each of the four files."""
    location = find(data_dir, allow_download=allow_download)
    found = {name: path for name, path in location.files.items() if path is not None}  # all four: it is complete
    return location, {name: _verified_raw(path, name, *checksums[name]) for name, path in found.items()}


def load(
    data_dir: Path | None = None,
    *,
    allow_download: bool = True,
    checksums: dict[str, tuple[str, int]] = FILES,
) -> FashionMNIST:
    """Find, verify and parse the four files. Call once per process.

    ``checksums`` maps file name -> (SHA-256, size) of the decompressed file; tests pass
    their own for tiny generated files.
    """
    location, raw = verified_files(data_dir, allow_download=allow_download, checksums=checksums)
    return FashionMNIST(
        train_images=_parsed(raw["train-images-idx3-ubyte"], checksums["train-images-idx3-ubyte"][0]),
        train_labels=_parsed(raw["train-labels-idx1-ubyte"], checksums["train-labels-idx1-ubyte"][0]),
        test_images=_parsed(raw["t10k-images-idx3-ubyte"], checksums["t10k-images-idx3-ubyte"][0]),
        test_labels=_parsed(raw["t10k-labels-idx1-ubyte"], checksums["t10k-labels-idx1-ubyte"][0]),
        source=location.directory,
    )


def _parsed(raw: Path, sha256: str) -> torch.Tensor:
    """The tensor in verified IDX file ``raw`` (of content ``sha256``): parsed by torchvision's
    reader the first time, then loaded from ``<cache>/parsed/<sha256>.pt`` (written whole, then
    renamed; named by the content it was parsed from, so it cannot belong to another file)."""
    cached = cache_dir().parent.parent / "parsed" / f"{sha256}.pt"
    if cached.is_file():
        try:
            return cast(torch.Tensor, torch.load(cached, weights_only=True))
        except Exception:  # unreadable (a disk error): parse again, and replace it
            pass
    from torchvision.datasets.mnist import read_image_file, read_label_file

    tensor = cast(torch.Tensor, (read_label_file if "labels" in raw.name else read_image_file)(str(raw)))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_whole(cached, lambda tmp: torch.save(tensor, tmp))
    except OSError:  # a read-only cache: parse every time
        pass
    return tensor


def stratified_split(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``n`` indices with each class in proportion to its frequency; return (picked, rest)."""
    total = len(labels)
    if not 0 < n < total:
        raise ValueError(f"split size must be between 1 and {total - 1}, got {n}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)  # type: ignore[no-untyped-call]
    # Largest-remainder rounding so the per-class quotas add up to exactly n.
    exact = counts.double() * n / total
    quota = exact.floor().long()
    quota[(exact - quota).argsort(descending=True)[: n - int(quota.sum())]] += 1
    picked, rest = [], []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        picked.append(idx[:q])
        rest.append(idx[q:])
    return torch.cat(picked).sort().values, torch.cat(rest).sort().values


@dataclass(frozen=True)
class Splits:
    """uint8 images and int64 labels for train / validation / test (CPU)."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def make_splits(ds: FashionMNIST, val_size: int, train_size: int | None = None, seed: int = 0) -> Splits:
    """Hold out a stratified validation split; optionally keep a stratified subset of the rest.

    The split depends only on (val_size, train_size, seed), so it is fixed for a study's life.
    """
    val_idx, train_idx = stratified_split(ds.train_labels, val_size, seed)
    if train_size is not None and train_size < len(train_idx):
        keep, _ = stratified_split(ds.train_labels[train_idx], train_size, seed + 1)
        train_idx = train_idx[keep]
    return Splits(
        train=(ds.train_images[train_idx], ds.train_labels[train_idx]),
        val=(ds.train_images[val_idx], ds.train_labels[val_idx]),
        test=(ds.test_images, ds.test_labels),
    )
