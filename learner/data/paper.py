"""The image-folder benchmarks of the Janus-LoRA and InfLoRA papers (class-incremental learning
with a pretrained ViT), for users who have the data locally (nothing is downloaded).

Each loader returns (train, test) as `FileBatch`es over the same class names: files sorted, labels
int64, images read at ``side`` only when asked. Errors are one line naming the file and the fix.

**ImageNet-R** (`imagenet-r.tar`): ``imagenet-r/<wnid>/<image>.jpg``, 200 class folders named by
WordNet id (``n01443537``), about 30,000 images, and a README.txt. It has no official split.
InfLoRA (`utils/data.py`, ``iIMAGENET_R.download_data``) splits the whole set, not each class:
``torch.utils.data.random_split`` of an ``ImageFolder`` into ``int(0.8 N)`` train and the rest
test, under the global torch seed of the first run (`trainer.py`, ``_set_random``), then moves the
files into ``train/`` and ``test/`` so later runs reuse that split. CODA-Prompt ships one such
whole-set split as a fixed list (`dataloaders/splits/imagenet-r_*.yaml`: 24,000 / 6,000; per
class between 71% and 92% train). Here likewise: one permutation of all N files (sorted by class,
then path) from ``numpy.random.default_rng(SeedSequence(seed))``; the first ``⌊4N/5⌋`` are train,
the rest test (*ours*: numpy instead of torch, so the same seed gives another split than
InfLoRA's, and nothing is moved on disk). A class left without a training image is refused.

**DomainNet**: ``<root>/<domain>/<class>/<file>.jpg`` and list files ``<domain>_train.txt`` /
``<domain>_test.txt`` with lines ``clipart/aircraft_carrier/clipart_001_000018.jpg 0``. InfLoRA
(`utils/data.py`, ``iDomainNet``) reads the fixed lists it took from CODA-Prompt
(`dataloaders/splits/domainnet_train.yaml`, `..._test.yaml`: paths and labels, domains pooled),
345 classes in 5 tasks of 69 (`configs/domainnet_inflora.json`), classes in label order; its
``domain_names`` names all six domains, but CODA-Prompt's lists reportedly lack quickdraw. Here:
train and test are exactly the listed files of ``domains`` (default: all six), sorted by path;
class i is the folder name that label i has in the lists.

**ImageNet-100**: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (or ``test/``);
classes are the train folders, sorted; val must have the same ones.

`detect` looks only at names, never inside images, in this order: DomainNet when a
``<domain>_train.txt`` of a known domain is there; ImageNet-100 when ``train/`` and ``val/`` (or
``test/``) are; ImageNet-R when the folder, or its ``imagenet-r/``, has at least one sub-folder
and every one is named like a WordNet id (``n`` and 8 digits; plain files such as README.txt are
ignored). A bare ImageNet ``train/`` folder therefore reads as ImageNet-R: an 80/20 split of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from learner.data.archives import visible
from learner.data.batch import DataError
from learner.data.files import FileBatch
from learner.data.loading import ImageFiles, list_images

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
TRAIN_FRACTION = (4, 5)
"""ImageNet-R's train share as a fraction: ⌊4N/5⌋ of the N images."""

_WNID = re.compile(r"n\d{8}")
_VAL_NAMES = ("val", "test")


def load_imagenet_r(
    root: str | os.PathLike[str], *, side: int, seed: int
) -> tuple[FileBatch, FileBatch]:
    """ImageNet-R split 80/20 over the whole set under ``seed`` (the module docstring says how).

    Args:
        root: the ``imagenet-r`` folder or the folder holding it.
        side: the square side images are read at.
        seed: a non-negative integer; the same seed gives the same split.

    Raises:
        DataError: the folder is missing or not ImageNet-R, a class folder is empty, or a class
            got no training image; the message names the folder.
    """
    if seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")
    path = Path(root)
    folder = path / "imagenet-r" if (path / "imagenet-r").is_dir() else path
    _require_dir(folder, "the imagenet-r folder of the official imagenet-r.tar")
    listing = list_images(folder)
    odd = [name for name in listing.class_names if not _WNID.fullmatch(name)]
    if odd:
        raise DataError(
            f"{folder}: sub-folders {odd[:5]} are not WordNet ids; pass the imagenet-r folder of "
            "the official imagenet-r.tar (200 folders named like n01443537); a copy already "
            "split into train/ and test/ loads with load_imagenet100"
        )
    n = len(listing.files)
    order = np.random.default_rng(np.random.SeedSequence(seed)).permutation(n)  # (N,)
    n_train = n * TRAIN_FRACTION[0] // TRAIN_FRACTION[1]
    train_idx, test_idx = np.sort(order[:n_train]), np.sort(order[n_train:])
    per_class = np.bincount(listing.labels[train_idx], minlength=len(listing.class_names))  # (K,)
    empty = np.flatnonzero(per_class == 0)
    if len(empty):
        name = listing.class_names[empty[0]]
        raise DataError(
            f"{folder / name}: no image of this class fell in the 80% train share under seed "
            f"{seed}; add images to the folder or pick another seed"
        )
    return _subset(listing, train_idx, side), _subset(listing, test_idx, side)


def load_domainnet(
    root: str | os.PathLike[str], *, side: int, domains: Sequence[str] = DOMAINS
) -> tuple[FileBatch, FileBatch]:
    """DomainNet's official train and test lists of ``domains``, pooled over the domains.

    Args:
        root: the folder holding the domain folders and ``<domain>_{train,test}.txt``.
        side: the square side images are read at.
        domains: which domains to pool (CODA-Prompt's split lists reportedly leave out
            quickdraw; pass the other five to match them).

    Raises:
        DataError: a list file is missing or has a malformed line, a label that disagrees with
            its class folder, or a path that does not exist; the message names file and line.
    """
    folder = Path(root)
    _require_dir(folder, "the DomainNet folder with <domain>/ and <domain>_train.txt")
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise DataError(f"domains must be some of {list(DOMAINS)}, got {list(domains)}")
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    label_of: dict[str, int] = {}  # class name -> label, over every list file
    name_of: dict[int, str] = {}
    for split, entries in splits.items():
        for domain in domains:
            entries.extend(_read_list(folder, f"{domain}_{split}.txt", label_of, name_of))
    missing = sorted(set(range(max(name_of) + 1)) - set(name_of)) if name_of else []
    if missing or not name_of:
        raise DataError(
            f"{folder}: the list files of {list(domains)} give no class the label "
            f"{missing[0] if missing else 0}; labels must run 0..K-1: restore the official lists"
        )
    leaked = sorted({p for p, _ in splits["train"]} & {p for p, _ in splits["test"]})
    if leaked:
        raise DataError(
            f"{folder}: {leaked[0]} is listed for both train and test; restore the official "
            "<domain>_train.txt and <domain>_test.txt"
        )
    class_names = tuple(name_of[i] for i in range(len(name_of)))
    train, test = (_from_entries(folder, splits[s], class_names, side) for s in ("train", "test"))
    return train, test


def load_imagenet100(root: str | os.PathLike[str], *, side: int) -> tuple[FileBatch, FileBatch]:
    """ImageNet-100's train folder and its val (or test) folder, same classes in both.

    Raises:
        DataError: a folder is missing or empty, or val lacks or adds classes; the message
            names them.
    """
    folder = Path(root)
    _require_dir(folder / "train", "a folder with train/<wnid>/ and val/<wnid>/")
    val_dir = _val_dir(folder)
    if val_dir is None:
        raise DataError(
            f"{folder}: no val/ (or test/) folder next to train/; add the validation images "
            "as val/<wnid>/<image>.JPEG"
        )
    train, val = list_images(folder / "train"), list_images(val_dir)
    lacking = sorted(set(train.class_names) - set(val.class_names))
    extra = sorted(set(val.class_names) - set(train.class_names))
    if lacking or extra:
        raise DataError(
            f"{val_dir}: classes differ from {folder / 'train'}: missing {lacking[:5]} "
            f"({len(lacking)}), extra {extra[:5]} ({len(extra)}); give val/ one folder per "
            "train class"
        )
    every = np.arange(len(train.files)), np.arange(len(val.files))
    return _subset(train, every[0], side), _subset(val, every[1], side)


LAYOUTS = {
    "cifar100": "cifar-100-binary/ with train.bin, test.bin and fine_label_names.txt",
    "imagenet-r": "imagenet-r/<wnid>/<image>.jpg",
    "domainnet": "<domain>/<class>/<image>.jpg with <domain>_train.txt and <domain>_test.txt",
    "imagenet100": "train/<wnid>/<image> and val/<wnid>/<image>",
}
"""Each benchmark's layout, as errors describe it (CIFAR-100: `learner.data.cifar100`)."""


def detect(path: str | os.PathLike[str]) -> str | None:
    """Which benchmark ``path`` holds: "domainnet", "imagenet100", "imagenet-r" or None."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    if any((folder / f"{d}_train.txt").is_file() for d in DOMAINS):
        return "domainnet"
    if (folder / "train").is_dir() and _val_dir(folder) is not None:
        return "imagenet100"
    for candidate in (folder / "imagenet-r", folder):
        if candidate.is_dir():
            subdirs = [p.name for p in candidate.iterdir() if p.is_dir() and visible(p.name)]
            if subdirs and all(_WNID.fullmatch(name) for name in subdirs):
                return "imagenet-r"
    return None


_LOADERS: dict[str, Callable[[Path, int, int], tuple[FileBatch, FileBatch]]] = {
    "imagenet-r": lambda p, side, seed: load_imagenet_r(p, side=side, seed=seed),
    "domainnet": lambda p, side, seed: load_domainnet(p, side=side),
    "imagenet100": lambda p, side, seed: load_imagenet100(p, side=side),
}


def load_paper_dataset(
    path: str | os.PathLike[str], *, side: int, seed: int
) -> tuple[str, FileBatch, FileBatch]:
    """The benchmark at ``path`` as (name, train, test); ``seed`` matters for ImageNet-R only.

    Raises:
        DataError: ``path`` holds none of the layouts (the message lists them) or its loader
            refuses it.
    """
    name = detect(path)
    if name is None:
        expected = "; ".join(f"{v} ({k})" for k, v in LAYOUTS.items() if k != "cifar100")
        raise DataError(f"{path}: not a paper benchmark folder; expected {expected}")
    train, test = _LOADERS[name](Path(path), side, seed)
    return name, train, test


def _require_dir(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; pass {what}")


def _val_dir(folder: Path) -> Path | None:
    return next((folder / n for n in _VAL_NAMES if (folder / n).is_dir()), None)


def _subset(listing: ImageFiles, idx: np.ndarray, side: int) -> FileBatch:
    return FileBatch(
        tuple(listing.files[i] for i in idx),
        listing.labels[idx],
        listing.class_names,
        side,
        shown=tuple(listing.shown[i] for i in idx),
    )


def _read_list(
    folder: Path, name: str, label_of: dict[str, int], name_of: dict[int, str]
) -> list[tuple[str, int]]:
    """(relative path, label) per line of one list file, checking labels against class folders
    (``label_of`` and ``name_of`` are shared by every list file and filled here)."""
    path = folder / name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path}: cannot read the DomainNet list file ({err}); put the official "
            f"{name} next to the domain folders, or leave its domain out of `domains`"
        ) from None
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        fields = line.strip().rsplit(maxsplit=1)
        rel = PurePosixPath(fields[0]) if fields else PurePosixPath()
        if (
            len(fields) != 2
            or not re.fullmatch(r"\d+", fields[1])
            or rel.is_absolute()
            or len(rel.parts) < 2
            or ".." in rel.parts
        ):
            raise DataError(
                f"{where}: expected '<domain>/<class>/<file> <label>', got {line.strip()!r}; "
                "restore the official list file"
            )
        label, cls = int(fields[1]), rel.parts[-2]
        known_label, known_name = label_of.setdefault(cls, label), name_of.setdefault(label, cls)
        if known_label != label or known_name != cls:
            clash = (
                f"class {cls!r} has label {label} here but {known_label} on an earlier line"
                if known_label != label
                else f"label {label} names {cls!r} here but {known_name!r} on an earlier line"
            )
            raise DataError(
                f"{where}: {clash}; every class needs one label in all list files: restore "
                "the official lists"
            )
        if not (folder / rel).is_file():
            raise DataError(
                f"{where}: {folder / rel} does not exist; extract that domain's images into "
                f"{folder} or remove the line"
            )
        entries.append((rel.as_posix(), label))
    return entries


def _from_entries(
    folder: Path, entries: list[tuple[str, int]], class_names: tuple[str, ...], side: int
) -> FileBatch:
    entries = sorted(entries)
    files = tuple(folder / rel for rel, _ in entries)
    labels = np.array([label for _, label in entries], dtype=np.int64)  # (N,)
    return FileBatch(files, labels, class_names, side, shown=tuple(map(str, files)))
