"""Streaming: a task learned from files read by worker processes is the task learned in memory,
an unreadable file is a one-line error naming it, and an archive streams while it is open."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.config import LoRAConfig, TrainConfig
from learner.data import (
    DataError,
    FileBatch,
    LabeledBatch,
    load_batch,
    open_batch,
    write_class_folders,
)
from learner.loader import EpochOrder, in_order, pixel_batches
from learner.state import LearnerState
from learner.train import evaluate, learn_task
from tests.conftest import TINY_BACKBONES

SIDE = 32  # the tiny convnet's side; the files are 16 px, so every read resizes


def _folder(digits: LabeledBatch, root: Path, names: list[str], per_class: int = 40) -> Path:
    batch = digits.select_classes(names)
    keep = [i for c in range(len(names)) for i in np.flatnonzero(batch.labels == c)[:per_class]]
    return write_class_folders(batch.subset(keep), root)


def _learn(batch, workers: int):
    lora = LoRAConfig(rank=2, alpha=2)
    cfg = TrainConfig(epochs=2, batch_size=16, design_samples=32, lora=lora, augment=True)
    return learn_task(LearnerState(TINY_BACKBONES["convnet"], lora), batch, cfg, workers=workers)


def test_a_task_learned_from_files_by_two_readers_equals_the_task_learned_in_memory(
    tmp_path: Path, digits: LabeledBatch
) -> None:
    folder = _folder(digits, tmp_path / "d", ["digit3", "digit8"])
    in_memory = load_batch(folder, image_size=SIDE)  # every image decoded up front
    with open_batch(folder, image_size=SIDE) as files:
        assert isinstance(files, FileBatch)
        streamed = _learn(files, workers=2)
        read_here = _learn(files, workers=0)
        accuracy = evaluate(streamed.model, files, streamed.state.class_names, workers=2)
    held = _learn(in_memory, workers=0)
    for result in (streamed, read_here):  # same order, same augmentation, same pixels
        torch.testing.assert_close(result.state.head_weight, held.state.head_weight)
        for mine, theirs in zip(
            result.state.adapters[0].values(), held.state.adapters[0].values(), strict=True
        ):
            torch.testing.assert_close(mine, theirs)
        assert result.metrics["loss"] == pytest.approx(held.metrics["loss"], rel=1e-5)
    assert accuracy == pytest.approx(evaluate(held.model, in_memory, held.state.class_names))
    assert accuracy > 60  # it learned something: two digit classes, chance is 50


def test_epoch_order_draws_a_new_permutation_per_pass_and_covers_every_index() -> None:
    order = EpochOrder(10, 4, torch.Generator().manual_seed(0))
    first, second = list(order), list(order)
    assert [len(b) for b in first] == [4, 4, 2] and len(order) == 3
    assert sorted(i for b in first for i in b) == list(range(10))
    assert first != second
    assert in_order(torch.arange(5), 2) == [[0, 1], [2, 3], [4]]


def test_a_file_that_breaks_mid_stream_is_one_line_naming_it(
    tmp_path: Path, digits: LabeledBatch
) -> None:
    folder = _folder(digits, tmp_path / "d", ["digit1", "digit2"], per_class=10)
    victim = sorted((folder / "digit2").iterdir())[3]
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG"
    )
    victim.unlink()
    broken = victim.with_suffix(".jpg")
    broken.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header fine, data cut
    with open_batch(folder, image_size=SIDE) as files:  # the header check lets it through
        for workers in (0, 2):
            loader = pixel_batches(
                files,
                SIDE,
                in_order(range(len(files)), 8),
                device=torch.device("cpu"),
                workers=workers,
            )
            with pytest.raises(DataError) as err:
                list(loader)
            assert str(broken) in str(err.value) and "\n" not in str(err.value)


def test_an_archive_streams_while_open_and_leaves_nothing(
    tmp_path: Path, digits: LabeledBatch
) -> None:
    folder = _folder(digits, tmp_path / "d", ["digit4", "digit5"], per_class=6)
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.rglob("*.png")):
            zf.write(file, file.relative_to(folder).as_posix())
    with open_batch(archive, image_size=SIDE) as files:
        assert isinstance(files, FileBatch) and files.counts() == {"digit4": 6, "digit5": 6}
        assert str(archive) in files.shown[0]  # errors name the archive's member
        pixels = files.load().images
        extracted = files.files
    assert pixels.shape == (12, SIDE, SIDE, 3)
    np.testing.assert_array_equal(pixels[..., :1], load_batch(archive, image_size=SIDE).images)
    assert not any(p.exists() for p in extracted)  # the temporary folder is gone


def test_a_file_batch_digest_follows_the_bytes_and_the_labels(
    tmp_path: Path, digits: LabeledBatch
) -> None:
    folder = _folder(digits, tmp_path / "d", ["digit6", "digit7"], per_class=4)
    with open_batch(folder, image_size=SIDE) as files:
        digest = files.digest()
        relabelled = FileBatch(files.files, 1 - files.labels, files.class_names, SIDE)
        assert relabelled.digest() != digest
    first = sorted((folder / "digit6").iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\x00")
    with open_batch(folder, image_size=SIDE) as files:
        assert files.digest() != digest
