"""The paper benchmarks (ImageNet-R, DomainNet, ImageNet-100) from tiny files written here in
their real layouts: solid-colour 8×8 JPEGs, one colour per file, so a read shows which file it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from learner.data.batch import DataError
from learner.data.files import FileBatch
from learner.data.paper import (
    DOMAINS,
    detect,
    load_domainnet,
    load_imagenet100,
    load_imagenet_r,
    load_paper_dataset,
)

SIDE = 4
WNIDS = ("n01443537", "n01484850", "n02051845")
DOMAINNET_CLASSES = ("zebra", "aircraft_carrier", "bee")  # by label: not alphabetical


class Colours:
    """Writes solid-colour JPEGs, each file its own colour, and remembers which."""

    def __init__(self) -> None:
        self.of: dict[Path, tuple[int, int, int]] = {}

    def write(self, path: Path) -> Path:
        k = len(self.of)
        colour = (20 + 40 * (k % 6), 20 + 40 * (k // 6 % 6), 20 + 40 * (k // 36 % 6))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(path, format="JPEG", quality=95)
        self.of[path] = colour
        return path

    def check(self, batch: FileBatch) -> None:
        """Every image reads as uint8 (side, side, 3) in the colour of its file."""
        for i, path in enumerate(batch.files):
            pixels = batch.read(i)
            assert pixels.dtype == np.uint8 and pixels.shape == (SIDE, SIDE, 3)
            diff = np.abs(pixels.astype(int) - np.array(self.of[path]))
            assert diff.max() <= 6, (path, pixels[0, 0], self.of[path])


def _labels_match_folders(batch: FileBatch) -> None:
    assert batch.labels.dtype == np.int64
    assert all(isinstance(n, str) for n in batch.class_names) and isinstance(
        batch.class_names, tuple
    )
    for path, label in zip(batch.files, batch.labels, strict=True):
        assert path.parent.name == batch.class_names[label]


# --------------------------------------------------------------------------------------------
# ImageNet-R
# --------------------------------------------------------------------------------------------


@pytest.fixture
def imagenet_r(tmp_path: Path) -> tuple[Path, Colours]:
    colours = Colours()
    folder = tmp_path / "imagenet-r"
    for wnid in WNIDS:
        for j in range(10):
            colours.write(folder / wnid / f"art_{j}.jpg")
    (folder / "README.txt").write_text("ImageNet-R: 200 classes\n")
    return folder, colours


def test_imagenet_r_splits_the_whole_set_80_20_with_the_wnid_classes(imagenet_r) -> None:
    folder, colours = imagenet_r
    train, test = load_imagenet_r(folder, side=SIDE, seed=0)
    assert train.class_names == test.class_names == WNIDS
    assert (len(train), len(test)) == (24, 6)
    assert set(train.files).isdisjoint(test.files)
    assert set(train.files) | set(test.files) == set(colours.of)
    assert list(train.files) == sorted(train.files) and list(test.files) == sorted(test.files)
    assert train.shown == tuple(map(str, train.files))
    _labels_match_folders(train)
    _labels_match_folders(test)
    colours.check(train)
    colours.check(test)


def test_imagenet_r_accepts_the_folder_holding_imagenet_r(imagenet_r) -> None:
    folder, _ = imagenet_r
    direct = load_imagenet_r(folder, side=SIDE, seed=3)
    parent = load_imagenet_r(folder.parent, side=SIDE, seed=3)
    assert [b.files for b in parent] == [b.files for b in direct]


def test_imagenet_r_split_is_fixed_by_the_seed_and_changes_with_it(imagenet_r) -> None:
    folder, _ = imagenet_r
    first, again = (load_imagenet_r(folder, side=SIDE, seed=7)[1] for _ in range(2))
    other = load_imagenet_r(folder, side=SIDE, seed=8)[1]
    assert first.files == again.files
    assert np.array_equal(first.labels, again.labels)
    assert first.files != other.files


def test_imagenet_r_is_not_stratified_per_class(imagenet_r) -> None:
    """The papers' split is over the whole set: per-class test counts vary between seeds."""
    folder, _ = imagenet_r
    counts = {
        tuple(load_imagenet_r(folder, side=SIDE, seed=s)[1].counts().values()) for s in range(20)
    }
    assert len(counts) > 1


def test_imagenet_r_refuses_a_class_left_without_training_images(imagenet_r) -> None:
    folder, colours = imagenet_r
    colours.write(folder / "n09999999" / "only.jpg")  # one image: in test under some seeds
    refused = 0
    for seed in range(30):
        try:
            train, _ = load_imagenet_r(folder, side=SIDE, seed=seed)
        except DataError as err:
            assert "n09999999" in str(err) and f"seed {seed}" in str(err)
            refused += 1
        else:
            assert train.counts()["n09999999"] == 1
    assert 0 < refused < 30


def test_imagenet_r_refuses_folders_that_are_not_wordnet_ids(tmp_path: Path) -> None:
    colours = Colours()
    for split in ("train", "test"):  # what InfLoRA's loader leaves on disk after its split
        colours.write(tmp_path / "imagenet-r" / split / WNIDS[0] / "a.jpg")
    with pytest.raises(DataError, match=r"not WordNet ids.*load_imagenet100"):
        load_imagenet_r(tmp_path, side=SIDE, seed=0)


def test_imagenet_r_empty_class_folder_or_missing_folder_is_a_data_error(
    imagenet_r, tmp_path: Path
) -> None:
    folder, _ = imagenet_r
    (folder / "n07614500").mkdir()
    with pytest.raises(DataError, match="n07614500: class folder has no images"):
        load_imagenet_r(folder, side=SIDE, seed=0)
    with pytest.raises(DataError, match="no such folder"):
        load_imagenet_r(tmp_path / "nowhere", side=SIDE, seed=0)
    with pytest.raises(DataError, match="seed"):
        load_imagenet_r(folder, side=SIDE, seed=-1)


def test_a_corrupt_jpeg_fails_when_read_and_the_error_names_it(imagenet_r) -> None:
    folder, _ = imagenet_r
    bad = folder / WNIDS[1] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    train, test = load_imagenet_r(folder, side=SIDE, seed=0)
    batch = train if bad in train.files else test
    with pytest.raises(DataError, match=r"broken\.jpg"):
        batch.read(batch.files.index(bad))


# --------------------------------------------------------------------------------------------
# DomainNet
# --------------------------------------------------------------------------------------------


def _write_domainnet(root: Path, domains=DOMAINS) -> Colours:
    """Per domain and class: 2 listed train, 1 listed test and 1 unlisted image; lines in an
    order that is not sorted."""
    colours = Colours()
    for domain in domains:
        lines: dict[str, list[str]] = {"train": [], "test": []}
        for label, cls in enumerate(DOMAINNET_CLASSES):
            for j, split in enumerate(("train", "train", "test")):
                rel = f"{domain}/{cls}/{domain}_{label:03d}_{j:06d}.jpg"
                colours.write(root / rel)
                lines[split].insert(0, f"{rel} {label}")
            colours.write(root / domain / cls / "unlisted.jpg")
        for split, rows in lines.items():
            (root / f"{domain}_{split}.txt").write_text("\n".join(rows) + "\n")
    return colours


def test_domainnet_is_exactly_the_listed_files_with_class_names_by_label(tmp_path: Path) -> None:
    colours = _write_domainnet(tmp_path)
    train, test = load_domainnet(tmp_path, side=SIDE)
    assert train.class_names == test.class_names == DOMAINNET_CLASSES
    assert (len(train), len(test)) == (6 * 3 * 2, 6 * 3)
    listed = {
        tmp_path / line.split()[0]
        for f in tmp_path.glob("*_train.txt")
        for line in f.read_text().splitlines()
    }
    assert set(train.files) == listed
    assert set(train.files).isdisjoint(test.files)
    assert not any(p.name == "unlisted.jpg" for p in (*train.files, *test.files))
    assert list(train.files) == sorted(train.files)
    assert {p.parent.parent.name for p in test.files} == set(DOMAINS)
    _labels_match_folders(train)
    _labels_match_folders(test)
    colours.check(train)
    colours.check(test)


def test_domainnet_loads_the_chosen_domains_and_needs_their_lists(tmp_path: Path) -> None:
    _write_domainnet(tmp_path, domains=("clipart", "real"))
    with pytest.raises(DataError, match=r"infograph_train\.txt"):
        load_domainnet(tmp_path, side=SIDE)
    train, test = load_domainnet(tmp_path, side=SIDE, domains=("real",))
    assert {p.parent.parent.name for p in (*train.files, *test.files)} == {"real"}
    assert (len(train), len(test)) == (6, 3)
    with pytest.raises(DataError, match="domains must be"):
        load_domainnet(tmp_path, side=SIDE, domains=("photos",))


@pytest.mark.parametrize(
    "line",
    [
        "clipart/bee/clipart_002_000000.jpg",  # no label
        "clipart/bee/clipart_002_000000.jpg two",  # label not an integer
        "clipart/bee/clipart_002_000000.jpg -2",  # negative label
        "clipart_002_000000.jpg 2",  # no class folder
        "/abs/clipart/bee/x.jpg 2",  # absolute path
        "clipart/bee/clipart_002_0",  # truncated
    ],
)
def test_domainnet_malformed_line_names_list_file_and_line(tmp_path: Path, line: str) -> None:
    _write_domainnet(tmp_path)
    lst = tmp_path / "clipart_test.txt"
    lst.write_text(lst.read_text() + line + "\n")
    with pytest.raises(DataError, match=r"clipart_test\.txt:4: expected"):
        load_domainnet(tmp_path, side=SIDE)


def test_domainnet_missing_listed_file_names_list_line_and_path(tmp_path: Path) -> None:
    _write_domainnet(tmp_path)
    (tmp_path / "sketch/bee/sketch_002_000000.jpg").unlink()  # 2nd train line of sketch
    with pytest.raises(DataError) as err:
        load_domainnet(tmp_path, side=SIDE)
    assert "sketch_train.txt:2:" in str(err.value)
    assert str(tmp_path / "sketch/bee/sketch_002_000000.jpg") in str(err.value)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("painting/bee/painting_002_000000.jpg 0", "class 'bee' has label 0 here but 2"),
        ("painting/cat/painting_002_000000.jpg 2", "label 2 names 'cat' here but 'bee'"),
    ],
)
def test_domainnet_labels_must_agree_with_class_folders(
    tmp_path: Path, line: str, says: str
) -> None:
    _write_domainnet(tmp_path)
    lst = tmp_path / "painting_test.txt"
    rows = lst.read_text().splitlines()
    lst.write_text("\n".join([line, *rows]) + "\n")
    with pytest.raises(DataError, match=rf"painting_test\.txt:1: {says}"):
        load_domainnet(tmp_path, side=SIDE)


def test_domainnet_refuses_gaps_in_labels_and_files_in_both_splits(tmp_path: Path) -> None:
    _write_domainnet(tmp_path, domains=("real",))
    train_list, test_list = tmp_path / "real_train.txt", tmp_path / "real_test.txt"
    original = train_list.read_text()
    train_list.write_text(original.replace(" 0\n", " 3\n"))  # zebra becomes 3: 0 has no class
    test_list.write_text(test_list.read_text().replace(" 0\n", " 3\n"))
    with pytest.raises(DataError, match="label 0"):
        load_domainnet(tmp_path, side=SIDE, domains=("real",))
    train_list.write_text(original)
    test_list.write_text(test_list.read_text().replace(" 3\n", " 0\n") + original.split("\n")[0])
    with pytest.raises(DataError, match="both train and test"):
        load_domainnet(tmp_path, side=SIDE, domains=("real",))


# --------------------------------------------------------------------------------------------
# ImageNet-100
# --------------------------------------------------------------------------------------------


def _write_imagenet100(root: Path, val: str = "val", val_wnids=WNIDS) -> Colours:
    colours = Colours()
    for wnid in WNIDS:
        for j in range(3):
            colours.write(root / "train" / wnid / f"{wnid}_{j}.JPEG")
    for wnid in val_wnids:
        colours.write(root / val / wnid / f"ILSVRC2012_val_{wnid}.JPEG")
    return colours


@pytest.mark.parametrize("val", ["val", "test"])
def test_imagenet100_reads_train_and_val_class_folders(tmp_path: Path, val: str) -> None:
    colours = _write_imagenet100(tmp_path, val)
    train, test = load_imagenet100(tmp_path, side=SIDE)
    assert train.class_names == test.class_names == WNIDS
    assert (len(train), len(test)) == (9, 3)
    assert all(p.parts[-3] == "train" for p in train.files)
    assert all(p.parts[-3] == val for p in test.files)
    assert list(train.files) == sorted(train.files)
    _labels_match_folders(train)
    _labels_match_folders(test)
    colours.check(train)
    colours.check(test)


def test_imagenet100_val_must_have_the_train_classes(tmp_path: Path) -> None:
    _write_imagenet100(tmp_path, val_wnids=WNIDS[:2])
    with pytest.raises(DataError, match=rf"missing \['{WNIDS[2]}'\]"):
        load_imagenet100(tmp_path, side=SIDE)


def test_imagenet100_without_val_folder_says_what_to_add(tmp_path: Path) -> None:
    _write_imagenet100(tmp_path)
    (tmp_path / "val").rename(tmp_path / "validation")
    with pytest.raises(DataError, match="no val/"):
        load_imagenet100(tmp_path, side=SIDE)


# --------------------------------------------------------------------------------------------
# Detection and dispatch
# --------------------------------------------------------------------------------------------


def test_detect_names_each_layout_and_none_for_an_ordinary_folder(
    imagenet_r, tmp_path: Path
) -> None:
    folder, _ = imagenet_r
    assert detect(folder) == detect(folder.parent) == "imagenet-r"
    _write_domainnet(tmp_path / "dn", domains=("clipart",))
    assert detect(tmp_path / "dn") == "domainnet"
    _write_imagenet100(tmp_path / "in100")
    assert detect(tmp_path / "in100") == "imagenet100"
    ordinary = tmp_path / "pets"
    Colours().write(ordinary / "cat" / "1.jpg")
    Colours().write(ordinary / "n01443537" / "1.jpg")  # one wnid among other folders
    assert detect(ordinary) is None
    assert detect(tmp_path / "missing") is None
    assert detect(folder / WNIDS[0] / "art_0.jpg") is None


def test_load_paper_dataset_dispatches_on_the_layout(imagenet_r, tmp_path: Path) -> None:
    folder, _ = imagenet_r
    name, train, test = load_paper_dataset(folder, side=SIDE, seed=5)
    assert name == "imagenet-r"
    assert (train.files, test.files) == tuple(
        b.files for b in load_imagenet_r(folder, side=SIDE, seed=5)
    )
    _write_imagenet100(tmp_path / "in100")
    assert load_paper_dataset(tmp_path / "in100", side=SIDE, seed=0)[0] == "imagenet100"
    _write_domainnet(tmp_path / "dn")
    name, train, _ = load_paper_dataset(tmp_path / "dn", side=SIDE, seed=0)
    assert (name, train.class_names) == ("domainnet", DOMAINNET_CLASSES)


def test_load_paper_dataset_lists_the_expected_layouts_when_none_matches(tmp_path: Path) -> None:
    Colours().write(tmp_path / "cat" / "1.jpg")
    with pytest.raises(DataError, match=r"\(imagenet-r\).*\(domainnet\).*\(imagenet100\)"):
        load_paper_dataset(tmp_path, side=SIDE, seed=0)
