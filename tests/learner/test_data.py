"""Labeled batches: every input form, every bad-input case, Fashion-MNIST and the splitters."""

from __future__ import annotations

import io
import re
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from learner.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    LabeledBatch,
    class_incremental_split,
    holdout_split,
    load_batch,
    load_fashion_mnist,
    per_class_limit,
    write_class_folders,
)

NAMES = ("zero", "one", "two")

# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> LabeledBatch:
    """Real digits, 5 per class for classes 0-2, upscaled 8×8 → 16×16 grayscale."""
    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:5] for c in range(3)])
    small = (d.images[idx] * 15).astype(np.uint8)  # (15, 8, 8), values 0..240
    big = np.kron(small, np.ones((1, 2, 2), dtype=np.uint8))  # (15, 16, 16)
    return LabeledBatch(big[..., None], d.target[idx].astype(np.int64), NAMES)


@pytest.fixture
def folder(tmp_path: Path, digits: LabeledBatch) -> Path:
    return write_class_folders(digits, tmp_path / "batch")


def _many_classes(n_classes: int = 10, per_class: int = 6, seed: int = 0) -> LabeledBatch:
    rng = np.random.default_rng(seed)
    n = n_classes * per_class
    images = rng.integers(0, 256, size=(n, 4, 4, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class)
    return LabeledBatch(images, labels, tuple(f"c{i}" for i in range(n_classes)))


def _archive(src: Path, dest: Path, wrap: str | None) -> Path:
    """Packs the class folders under ``src`` into ``dest`` (zip or tar by suffix)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    arcnames = [(f, f"{wrap}/" * bool(wrap) + f.relative_to(src).as_posix()) for f in files]
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            for f, name in arcnames:
                zf.write(f, name)
    else:
        gz = dest.name.endswith((".tar.gz", ".tgz"))
        with tarfile.open(dest, "w:gz") if gz else tarfile.open(dest, "w") as tf:
            for f, name in arcnames:
                tf.add(f, name)
    return dest


def _png_bytes(value: int = 128, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(
    dest: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None
) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # unix, so the mode bits below count
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return dest


def _tar(
    dest: Path, members: list[tuple[str, bytes]], links: Sequence[tarfile.TarInfo] = ()
) -> Path:
    with tarfile.open(dest, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in links:
            tf.addfile(info)
    return dest


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` pixels: a decompression bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Extraction happens two levels below ``tmp_path``, so a ``../`` escape would land in it."""
    work = tmp_path / "tmp" / "deep"
    work.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    return tmp_path


def _nothing_escaped(root: Path) -> bool:
    """No extracted file anywhere under ``root``, nor at the absolute path used below."""
    extracted = [p for p in root.rglob("*") if p.is_file() and p.suffix not in (".zip", ".tar")]
    return not extracted and not Path("/tmp/evil.png").exists()


# ---------------------------------------------------------------------------------------------
# The batch type
# ---------------------------------------------------------------------------------------------


def test_batch_methods(digits: LabeledBatch) -> None:
    assert len(digits) == 15
    assert digits.counts() == {"zero": 5, "one": 5, "two": 5}
    sub = digits.subset([0, 5, 10])
    assert sub.labels.tolist() == [0, 1, 2]
    assert np.array_equal(sub.images[1], digits.images[5])
    mask = digits.subset(digits.labels == 2)
    assert mask.counts() == {"zero": 0, "one": 0, "two": 5}

    picked = digits.select_classes(["two", "zero"])
    assert picked.class_names == ("two", "zero")
    assert picked.counts() == {"two": 5, "zero": 5}
    assert np.array_equal(picked.images[picked.labels == 0], digits.images[digits.labels == 2])


def test_repr_is_short(digits: LabeledBatch) -> None:
    assert repr(digits) == (
        "LabeledBatch(n=15, image_shape=(16, 16, 1), class_names=('zero', 'one', 'two'))"
    )


def test_digest_is_stable_and_sensitive(digits: LabeledBatch) -> None:
    same = LabeledBatch(digits.images.copy(), digits.labels.copy(), digits.class_names)
    assert digits.digest() == same.digest()
    assert len(digits.digest()) == 64
    images = digits.images.copy()
    images[0, 0, 0, 0] ^= 1
    assert LabeledBatch(images, digits.labels, NAMES).digest() != digits.digest()
    labels = digits.labels.copy()
    labels[[0, -1]] = labels[[-1, 0]]
    assert LabeledBatch(digits.images, labels, NAMES).digest() != digits.digest()
    renamed = ("zero", "one", "deux")
    assert LabeledBatch(digits.images, digits.labels, renamed).digest() != digits.digest()


@pytest.mark.parametrize(
    ("images", "labels", "names", "match"),
    [
        (np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 1]), ("a", "b"), "3 images but 2 labels"),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 2]), ("a", "b"), "label 2 has no class"),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0, -1]), ("a", "b"), "label -1 has no"),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]), ("a", "a"), "unique.*'a'"),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]), ("a", " "), "non-empty"),
        (np.zeros((2, 4, 4, 1), np.float32), np.array([0, 1]), ("a", "b"), "uint8"),
        (np.zeros((2, 4, 4, 2), np.uint8), np.array([0, 1]), ("a", "b"), r"C in \{1, 3\}"),
        (np.zeros((2, 4, 4, 1), np.uint8), np.array([0.0, 1.0]), ("a", "b"), "integer"),
    ],
)
def test_batch_validation(
    images: np.ndarray, labels: np.ndarray, names: tuple[str, ...], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        LabeledBatch(images, labels, names)


# ---------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------


def test_npz_grayscale_round_trip(tmp_path: Path, digits: LabeledBatch) -> None:
    path = tmp_path / "gray.npz"
    np.savez(path, images=digits.images[..., 0], labels=digits.labels, class_names=list(NAMES))
    batch = load_batch(path)
    assert batch.images.shape == (15, 16, 16, 1)
    assert batch.class_names == NAMES
    assert batch.labels.dtype == np.int64
    assert batch.digest() == digits.digest()


def test_npz_colour_round_trip_and_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 10, 12, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 1, 0], dtype=np.int32)
    path = tmp_path / "colour.npz"
    np.savez_compressed(path, images=images, labels=labels, class_names=np.array(["cat", "dog"]))
    batch = load_batch(path)
    assert np.array_equal(batch.images, images)
    assert batch.labels.tolist() == labels.tolist()
    assert batch.class_names == ("cat", "dog")
    resized = load_batch(path, image_size=8)
    assert resized.images.shape == (6, 8, 8, 3)


def _npz(path: Path, **arrays: np.ndarray | list[str]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"images": np.zeros((2, 4, 4), np.uint8), "labels": [0, 5], "class_names": ["a"]},
            r"'labels' contains 5, which has no class name",
        ),
        (
            {"images": np.zeros((2, 4, 4), np.uint8), "labels": [0, -1], "class_names": ["a"]},
            r"'labels' contains -1",
        ),
        (
            {"images": np.zeros((3, 4, 4), np.uint8), "labels": [0, 0], "class_names": ["a"]},
            r"3 images but 2 labels",
        ),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": [0, 0]}, r"missing key.*class_names"),
        ({"labels": [0], "class_names": ["a"]}, r"missing key.*images"),
        (
            {"images": np.zeros((2, 4, 4), np.float32), "labels": [0, 0], "class_names": ["a"]},
            r"'images' has dtype float32, expected uint8",
        ),
        (
            {"images": np.zeros((2, 4, 4), np.uint8), "labels": [0.0, 0.0], "class_names": ["a"]},
            r"'labels' must be a 1-D integer",
        ),
        (
            {
                "images": np.zeros((2, 4, 4), np.uint8),
                "labels": [0, 0],
                "class_names": np.array(["a"], dtype=object),
            },
            r"without pickle",
        ),
    ],
)
def test_npz_bad_input(tmp_path: Path, arrays: dict, match: str) -> None:
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as err:
        load_batch(path)
    assert str(path) in str(err.value)


def test_npz_too_big(tmp_path: Path, digits: LabeledBatch) -> None:
    path = _npz(
        tmp_path / "b.npz", images=digits.images, labels=digits.labels, class_names=list(NAMES)
    )
    with pytest.raises(DataError, match="max_bytes=100") as err:
        load_batch(path, max_bytes=100)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# Class folders and archives
# ---------------------------------------------------------------------------------------------


def test_folder_of_pngs(folder: Path, digits: LabeledBatch) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
    (folder / "zero" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    (folder / "one" / "notes.txt").write_text("not an image")
    batch = load_batch(folder)
    assert batch.class_names == ("one", "two", "zero")  # sorted folder names
    expected = digits.select_classes(batch.class_names)
    expected = expected.subset(np.argsort(expected.labels, kind="stable"))  # class by class
    assert batch.digest() == expected.digest()


def test_folder_of_jpegs_and_mixed_colour(tmp_path: Path, digits: LabeledBatch) -> None:
    root = tmp_path / "mixed"
    for name in NAMES:
        (root / name).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(digits.images[..., 0], digits.labels, strict=True)):
        name = NAMES[label]
        if name == "zero":
            Image.fromarray(img).save(root / name / f"{i}.png")
        elif name == "one":
            Image.fromarray(img).save(root / name / f"{i}.jpg", quality=95)
        else:  # colour JPEGs, tinted red
            rgb = np.stack([img, img // 2, img // 2], axis=-1)
            Image.fromarray(rgb).save(root / name / f"{i}.jpeg", quality=95)
    batch = load_batch(root)
    assert batch.images.shape == (15, 16, 16, 3)  # one colour image makes all RGB
    assert batch.class_names == ("one", "two", "zero")
    zero = batch.images[batch.labels == 2]
    assert np.array_equal(zero[..., 0], zero[..., 2])  # gray replicated into RGB
    assert np.array_equal(zero[..., 0], digits.images[digits.labels == 0][..., 0])
    ones = batch.images[batch.labels == 0][..., 0].astype(int)
    assert np.abs(ones - digits.images[digits.labels == 1][..., 0]).mean() < 8  # JPEG is lossy
    twos = batch.images[batch.labels == 1].astype(int)
    assert twos[..., 0].mean() > 1.6 * twos[..., 1].mean()  # red stays red


def test_folder_mixed_sizes(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i, size in enumerate([(10, 6), (10, 6), (20, 20)]):
        Image.new("L", size, 200).save(root / "a" / f"{i}.png")
    Image.new("RGBA", (10, 6), (1, 2, 3, 255)).save(root / "b" / "x.png")
    batch = load_batch(root)
    assert batch.images.shape == (4, 6, 10, 3)  # most common size (W=10, H=6), RGB
    assert batch.images[-1, 0, 0].tolist() == [1, 2, 3]
    assert load_batch(root, image_size=12).images.shape == (4, 12, 12, 3)


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tgz"])
@pytest.mark.parametrize("wrap", [None, "batch-v1"])
def test_archives(
    tmp_path: Path, folder: Path, digits: LabeledBatch, suffix: str, wrap: str | None
) -> None:
    archive = _archive(folder, tmp_path / f"batch{suffix}", wrap)
    batch = load_batch(archive)
    assert batch.class_names == ("one", "two", "zero")
    assert batch.digest() == load_batch(folder).digest()


def test_archive_links_inside_are_copied(tmp_path: Path) -> None:
    png = _png_bytes(77)
    members = [("a/1.png", png), ("b/2.png", _png_bytes(5))]
    links = [
        _link("b/3.png", "../a/1.png", tarfile.SYMTYPE),
        _link("b/4.png", "a/1.png", tarfile.LNKTYPE),
    ]
    batch = load_batch(_tar(tmp_path / "links.tar", members, links))
    assert batch.counts() == {"a": 1, "b": 3}
    assert batch.images[batch.labels == 1][:, 0, 0, 0].tolist() == [5, 77, 77]


# ---------------------------------------------------------------------------------------------
# Bad input: folders, images
# ---------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder") as err:
        load_batch(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


def test_unsupported_file(tmp_path: Path) -> None:
    path = tmp_path / "batch.csv"
    path.write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type") as err:
        load_batch(path)
    assert str(path) in str(err.value)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class sub-folders") as err:
        load_batch(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_images_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(_png_bytes())
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_batch(tmp_path)


def test_class_folder_without_images(folder: Path) -> None:
    (folder / "three").mkdir()
    (folder / "three" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="class folder has no images") as err:
        load_batch(folder)
    assert str(folder / "three") in str(err.value)


def test_unreadable_image(folder: Path) -> None:
    bad = folder / "one" / "broken.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match=r"not a recognised image.*replace or remove") as err:
        load_batch(folder)
    assert str(bad) in str(err.value)


def test_truncated_image(folder: Path) -> None:
    bad = folder / "two" / "cut.png"
    bad.write_bytes(_png_bytes(size=64)[:60])
    with pytest.raises(DataError, match=r"corrupt PNG data.*replace or remove") as err:
        load_batch(folder)
    assert str(bad) in str(err.value)


def test_unreadable_image_in_archive_names_member(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "b.zip", [("a/ok.png", _png_bytes()), ("a/bad.png", b"garbage")])
    with pytest.raises(DataError, match="not a recognised image") as err:
        load_batch(archive)
    assert f"{archive}:a/bad.png" in str(err.value)


@pytest.mark.parametrize("size", [(100_000, 100_000), (8_000, 8_000)])
def test_decompression_bomb(folder: Path, size: tuple[int, int]) -> None:
    # 10^10 pixels trips PIL's own bomb check; 6.4·10^7 trips our lower default limit.
    bomb = folder / "zero" / "bomb.png"
    bomb.write_bytes(_png_header_only(*size))
    with pytest.raises(DataError, match=r"decompression bomb|above the limit of 40000000") as err:
        load_batch(folder)
    assert str(bomb) in str(err.value)


def test_max_pixels(folder: Path) -> None:
    with pytest.raises(DataError, match="above the limit of 100") as err:
        load_batch(folder, max_pixels=100)
    assert str(folder) in str(err.value)


# ---------------------------------------------------------------------------------------------
# Bad input: unsafe or oversized archives
# ---------------------------------------------------------------------------------------------

_OK = ("data/a/ok.png", _png_bytes())


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize(
    ("member", "match"),
    [
        ("data/../../evil.png", "escapes its folder through '..'"),
        ("../evil.png", "escapes its folder through '..'"),
        ("/tmp/evil.png", "absolute path"),
    ],
)
def test_archive_member_escaping(sandbox: Path, kind: str, member: str, match: str) -> None:
    make = _zip if kind == "zip" else _tar
    archive = make(sandbox / f"evil.{kind}", [_OK, (member, _png_bytes())])
    with pytest.raises(DataError, match=match) as err:
        load_batch(archive)
    assert str(archive) in str(err.value) and member in str(err.value)
    assert _nothing_escaped(sandbox)


def test_zip_symlink_escaping(sandbox: Path) -> None:
    archive = _zip(sandbox / "l.zip", [_OK], symlinks={"data/a/evil.png": "../../../etc/passwd"})
    with pytest.raises(DataError, match=re.escape("symbolic link to '../../../etc/passwd'")) as err:
        load_batch(archive)
    assert str(archive) in str(err.value) and "data/a/evil.png" in str(err.value)
    assert _nothing_escaped(sandbox)


@pytest.mark.parametrize(
    ("target", "kind", "what"),
    [
        ("../../../etc/passwd", tarfile.SYMTYPE, "symbolic"),
        ("/etc/passwd", tarfile.SYMTYPE, "symbolic"),
        ("../outside.png", tarfile.LNKTYPE, "hard"),
    ],
)
def test_tar_link_escaping(sandbox: Path, target: str, kind: bytes, what: str) -> None:
    archive = _tar(sandbox / "l.tar", [_OK], [_link("data/a/evil.png", target, kind)])
    with pytest.raises(DataError, match=f"is a {what} link to") as err:
        load_batch(archive)
    assert str(archive) in str(err.value) and "data/a/evil.png" in str(err.value)
    assert _nothing_escaped(sandbox)


def test_tar_special_file(tmp_path: Path) -> None:
    fifo = tarfile.TarInfo("data/a/pipe.png")
    fifo.type = tarfile.FIFOTYPE
    archive = _tar(tmp_path / "f.tar", [_OK], [fifo])
    with pytest.raises(DataError, match="special file") as err:
        load_batch(archive)
    assert "data/a/pipe.png" in str(err.value)


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_archive_too_big(tmp_path: Path, folder: Path, suffix: str) -> None:
    archive = _archive(folder, tmp_path / f"big{suffix}", None)
    with pytest.raises(DataError, match="above max_bytes=1000") as err:
        load_batch(archive, max_bytes=1000)
    assert str(archive) in str(err.value)


def test_archive_too_many_members(tmp_path: Path, folder: Path) -> None:
    archive = _archive(folder, tmp_path / "many.tar", None)
    with pytest.raises(DataError, match="more than max_members=10") as err:
        load_batch(archive, max_members=10)
    assert str(archive) in str(err.value)


def test_corrupt_archive(tmp_path: Path) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a readable zip") as err:
        load_batch(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> None:
    """An IDX file of unsigned bytes as Fashion-MNIST ships them: magic, sizes, data."""
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    if gz:
        import gzip

        with gzip.open(path.with_name(path.name + ".gz"), "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize(
    ("split", "prefix", "gz"), [("train", "train", True), ("test", "t10k", False)]
)
def test_fashion_mnist(tmp_path: Path, split: str, prefix: str, gz: bool) -> None:
    """The real file format (gzip or plain IDX), small files written here: every pixel and label
    comes back, under the official class names."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.arange(30, dtype=np.uint8) % 10
    _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images, 2051, gz)
    _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, 2049, gz)
    batch = load_fashion_mnist(tmp_path, split)  # type: ignore[arg-type]
    assert batch.images.shape == (30, 28, 28, 1)
    assert np.array_equal(batch.images[..., 0], images)
    assert np.array_equal(batch.labels, labels)
    assert batch.class_names == FASHION_MNIST_CLASSES and len(batch.class_names) == 10


def test_fashion_mnist_truncated(tmp_path: Path) -> None:
    images = np.zeros((4, 28, 28), np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, 2051, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8), 2049, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist(tmp_path, "test")


def test_fashion_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        load_fashion_mnist(tmp_path, "test")
    assert "t10k-images-idx3-ubyte" in str(err.value)


def test_fashion_mnist_bad_magic(tmp_path: Path) -> None:
    import gzip

    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 1234, 1, 1, 1) + b"\x00")
    with pytest.raises(DataError, match="magic 1234, expected 2051") as err:
        load_fashion_mnist(tmp_path, "test")
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def test_holdout_split() -> None:
    batch = _many_classes(n_classes=3, per_class=10)
    train, held = holdout_split(batch, 0.2, seed=3)
    assert held.counts() == {"c0": 2, "c1": 2, "c2": 2}
    assert train.counts() == {"c0": 8, "c1": 8, "c2": 8}
    again_train, again_held = holdout_split(batch, 0.2, seed=3)
    assert again_held.digest() == held.digest() and again_train.digest() == train.digest()
    assert holdout_split(batch, 0.2, seed=4)[1].digest() != held.digest()
    # disjoint and complete: every image of the batch is in exactly one side
    rows = {img.tobytes() for img in batch.images}
    assert {img.tobytes() for img in train.images} | {img.tobytes() for img in held.images} == rows
    # tiny classes still keep one training and one held-out sample
    two = _many_classes(n_classes=2, per_class=2)
    t, h = holdout_split(two, 0.9, seed=0)
    assert t.counts() == h.counts() == {"c0": 1, "c1": 1}


def test_holdout_split_needs_two_per_class() -> None:
    batch = LabeledBatch(np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 0, 1]), ("a", "lonely"))
    with pytest.raises(DataError, match="class 'lonely' has 1 sample"):
        holdout_split(batch, 0.2, seed=0)
    with pytest.raises(DataError, match="between 0 and 1"):
        holdout_split(batch, 1.0, seed=0)


def test_per_class_limit() -> None:
    batch = LabeledBatch(
        np.arange(9, dtype=np.uint8).reshape(9, 1, 1, 1),
        np.array([0, 0, 0, 0, 0, 1, 1, 2, 2]),
        ("a", "b", "c"),
    )
    small = per_class_limit(batch, 2, seed=0)
    assert small.counts() == {"a": 2, "b": 2, "c": 2}
    assert per_class_limit(batch, 2, seed=0).digest() == small.digest()
    assert per_class_limit(batch, 10, seed=0).digest() == batch.digest()


def test_class_incremental_split_with_test_batch() -> None:
    train, test = _many_classes(seed=0), _many_classes(per_class=3, seed=1)
    tasks = class_incremental_split(train, test, tasks=5, seed=7)
    assert [t.index for t in tasks] == [0, 1, 2, 3, 4]
    seen = [c for t in tasks for c in t.class_names]
    assert sorted(seen) == sorted(train.class_names)  # disjoint and complete
    assert seen != list(train.class_names)  # shuffled by the seed
    for task in tasks:
        assert len(task.class_names) == 2
        assert task.train.class_names == task.test.class_names == task.class_names
        assert task.train.counts() == dict.fromkeys(task.class_names, 6)
        assert task.test.counts() == dict.fromkeys(task.class_names, 3)
        assert set(task.train.labels.tolist()) == {0, 1}
    again = class_incremental_split(train, test, tasks=5, seed=7)
    assert [t.train.digest() for t in again] == [t.train.digest() for t in tasks]
    other = class_incremental_split(train, test, tasks=5, seed=8)
    assert [t.class_names for t in other] != [t.class_names for t in tasks]


def test_class_incremental_split_holdout_and_order() -> None:
    train = _many_classes(n_classes=4, per_class=10)
    order = ["c3", "c1", "c0", "c2"]
    tasks = class_incremental_split(train, None, tasks=2, seed=0, holdout=0.3, class_order=order)
    assert [t.class_names for t in tasks] == [("c3", "c1"), ("c0", "c2")]
    for task in tasks:
        assert set(task.train.counts().values()) == {7}
        assert set(task.test.counts().values()) == {3}
        train_rows = {img.tobytes() for img in task.train.images}
        assert not train_rows & {img.tobytes() for img in task.test.images}
    again = class_incremental_split(train, None, tasks=2, seed=0, holdout=0.3, class_order=order)
    assert [t.test.digest() for t in again] == [t.test.digest() for t in tasks]


@pytest.mark.parametrize("tasks", [3, 4, 0, 11])
def test_class_incremental_split_indivisible(tasks: int) -> None:
    with pytest.raises(DataError, match=r"10 classes cannot be split.*one of \[1, 2, 5, 10\]"):
        class_incremental_split(_many_classes(), None, tasks=tasks, seed=0)


def test_class_incremental_split_bad_order_and_test() -> None:
    train = _many_classes(n_classes=4)
    with pytest.raises(DataError, match="class_order names \\['nope'\\]"):
        class_incremental_split(train, None, tasks=1, seed=0, class_order=["nope"])
    test = train.select_classes(["c0", "c1", "c2"])
    with pytest.raises(DataError, match="lacks classes \\['c3'\\]"):
        class_incremental_split(train, test, tasks=2, seed=0, class_order=["c0", "c1", "c2", "c3"])
    big = LabeledBatch(np.zeros((4, 8, 8, 1), np.uint8), np.arange(4), train.class_names)
    with pytest.raises(DataError, match="same image_size"):
        class_incremental_split(train, big, tasks=2, seed=0)


def test_write_class_folders_refuses_unsafe_names(tmp_path: Path) -> None:
    batch = LabeledBatch(np.zeros((1, 2, 2, 1), np.uint8), np.array([0]), ("../up",))
    with pytest.raises(DataError, match="cannot be a folder name"):
        write_class_folders(batch, tmp_path)
