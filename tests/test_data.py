import gzip

import pytest
import torch

from fmnist_search.core.errors import DataError
from fmnist_search.engine import data


@pytest.mark.parametrize("compress", [True, False])
def test_loads_tiny_idx_files(tiny_idx, compress):
    folder, sums = tiny_idx(compress)
    ds = data.load(folder, allow_download=False, checksums=sums)
    assert ds.source == folder
    assert ds.train_images.shape == (50, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.tolist() == [i % 10 for i in range(50)]
    assert ds.test_images.shape == (20, 28, 28)


def test_corrupt_file_is_named(tiny_idx):
    folder, sums = tiny_idx(compress=False)
    path = folder / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is corrupt"):
        data.load(folder, allow_download=False, checksums=sums)


def test_truncated_gzip_is_named(tiny_idx):
    folder, sums = tiny_idx(compress=True)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is corrupt or truncated"):
        data.load(folder, allow_download=False, checksums=sums)


def test_truncated_raw_file_is_named(tiny_idx):
    folder, sums = tiny_idx(compress=True)
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz is truncated"):
        data.load(folder, allow_download=False, checksums=sums)


def test_not_found_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(DataError, match=r"not found.*apt-get install dataset-fashion-mnist"):
        data.load(allow_download=False)


def test_a_chosen_folder_without_the_data_is_never_replaced_by_another(tmp_path, real_data):
    """The system copy is there (real_data), but the folder the user chose is what counts."""
    assert data.locate(None) is not None and data.locate(tmp_path) is None
    with pytest.raises(DataError, match=rf"{tmp_path} holds no Fashion-MNIST \(missing train-images-idx3-ubyte"):
        data.load(tmp_path, allow_download=True)  # no download into another folder either


def test_data_dir_is_searched_first(tiny_idx):
    folder, _ = tiny_idx()
    assert data.search_dirs(folder)[0] == folder
    assert data.locate(folder).directory == folder


def test_stratified_split_keeps_class_proportions():
    labels = torch.arange(1000) % 10
    labels[:100] = 0  # make class 0 over-represented: 190 of 1000
    picked, rest = data.stratified_split(labels, 200, seed=0)
    assert len(picked) == 200 and len(rest) == 800
    assert set(picked.tolist()).isdisjoint(rest.tolist())
    counts = labels[picked].bincount(minlength=10)
    assert counts[0] == 38  # 19% of 200
    assert counts.sum() == 200


def test_split_is_deterministic_and_seeded():
    labels = torch.arange(500) % 10
    a, _ = data.stratified_split(labels, 50, seed=1)
    b, _ = data.stratified_split(labels, 50, seed=1)
    c, _ = data.stratified_split(labels, 50, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_real_data_verifies_and_splits(real_data):
    assert real_data.train_images.shape == (60_000, 28, 28)
    assert real_data.test_labels.bincount().tolist() == [1000] * 10
    mean = real_data.train_images.float().div(255).mean().item()
    assert abs(mean - 0.2860) < 1e-3
    splits = data.make_splits(real_data, val_size=10_000, train_size=5_000, seed=0)
    assert len(splits.val[0]) == 10_000 and splits.val[1].bincount().tolist() == [1000] * 10
    assert len(splits.train[0]) == 5_000 and splits.train[1].bincount().tolist() == [500] * 10


def test_search_dirs_take_fmnist_data_dir_when_no_folder_is_given(monkeypatch, tmp_path):
    # Benchmarks call data.load() without the CLI; the env var must still point them at the data.
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path))
    assert data.search_dirs()[0] == tmp_path
    assert data.search_dirs(tmp_path / "given")[0] == tmp_path / "given"


def test_a_later_process_loads_the_parsed_tensors_without_torchvision(tiny_idx):
    """torchvision parses the files once; the next process loads its tensors and never imports it."""
    import json
    import subprocess
    import sys

    folder, sums = tiny_idx(compress=True)
    first = data.load(folder, allow_download=False, checksums=sums)
    parsed = data.cache_dir().parent.parent / "parsed"
    assert {p.name for p in parsed.iterdir()} >= {f"{sha}.pt" for sha, _ in sums.values()}
    code = (
        "import json, sys; from pathlib import Path; from fmnist_search.engine import data\n"
        f"ds = data.load(Path({str(folder)!r}), allow_download=False, checksums=json.loads({json.dumps(sums)!r}))\n"
        "print(json.dumps(['torchvision' in sys.modules, ds.train_images.sum().item(), ds.test_labels.tolist()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, pixels, labels = json.loads(out.stdout)
    assert not imported
    assert pixels == first.train_images.sum().item() and labels == first.test_labels.tolist()
    # an unreadable cached tensor is parsed again (and replaced), never trusted
    (parsed / f"{sums['train-images-idx3-ubyte'][0]}.pt").write_bytes(b"not a tensor")
    again = data.load(folder, allow_download=False, checksums=sums)
    assert torch.equal(again.train_images, first.train_images)
    assert torch.equal(torch.load(parsed / f"{sums['train-images-idx3-ubyte'][0]}.pt"), first.train_images)
