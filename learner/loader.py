"""Pixel batches for the learner: a torch `DataLoader` over a labeled batch in memory or on disk.

A `LabeledBatch` is in memory: its batches are sliced in the calling process (and resized there
to the model's side, a batch at a time, if the images have another size). A `FileBatch` streams:
worker processes decode and resize each image when its batch is asked for (`FileBatch.read`, the
one image path of `learner.data.images`), a few batches ahead of the step loop, so memory holds
the batches in flight and never the dataset. On CUDA the batches come in pinned memory, so their
copy to the device does not block (`non_blocking=True`).

The caller chooses the order (a batch sampler: lists of indices), so a task draws the same order
and the same augmentation whether its images are in memory or on disk, and with any number of
workers: the workers only read, the random draws stay in the calling process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from learner.data import Batch, DataError, FileBatch
from learner.data.images import array_pixels
from learner.inputs import to_uint8_tensor

log = logging.getLogger(__name__)

Pixels = tuple[torch.Tensor, torch.Tensor]
"""uint8 images (B, C, S, S) and their int64 labels (B,)."""


def default_workers() -> int:
    """Reader processes for a streamed batch: half the cores this process may use, 1 to 8 (the
    other half trains)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 2) // 2))


class PixelDataset(Dataset[Pixels]):
    """A labeled batch at the model's side, read a batch of indices at a time: files decoded at
    the side, images in memory resized to it when their size differs (the same resize)."""

    def __init__(self, batch: Batch, side: int) -> None:
        self.batch, self.side = batch.resized(side) if isinstance(batch, FileBatch) else batch, side

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, index: int) -> Pixels:
        """One image (C, S, S) and its label (a scalar tensor)."""
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices: Sequence[int]) -> Pixels:
        """The images at `indices` as one batch (the DataLoader calls this with a whole batch)."""
        idx = np.asarray(indices, dtype=np.int64)
        batch = self.batch
        if isinstance(batch, FileBatch):
            pixels = batch.read_many(idx)  # decoded at the side
        else:
            pixels = batch.images[idx]
            if pixels.shape[1:3] != (self.side, self.side):  # resized a batch at a time
                pixels = np.stack([array_pixels(im, self.side) for im in pixels])
        return to_uint8_tensor(pixels), torch.from_numpy(batch.labels[idx])


class _Reader(PixelDataset):
    """What a reader process runs: a file it cannot read comes back as the error's message (a
    `DataError` naming the file), raised again in the training process as it was."""

    def __getitems__(self, indices: Sequence[int]) -> Any:
        try:
            return super().__getitems__(indices)
        except DataError as err:
            return _Unreadable(str(err))


@dataclass(frozen=True)
class _Unreadable:
    message: str


class PixelBatches:
    """The batches of `pixel_batches`, in order; a file that cannot be read raises `DataError`."""

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Pixels]:
        for item in self.loader:
            if isinstance(item, _Unreadable):
                raise DataError(item.message)
            yield item


def _daemonic() -> bool:
    """Whether this process may not start children (a multiprocessing pool's worker): then a
    batch on disk is read here, one batch at a time."""
    daemonic = bool(multiprocessing.current_process().daemon)
    if daemonic:
        log.warning("reading images in this process: a daemonic process cannot start readers")
    return daemonic


def _as_is(batch: Any) -> Any:
    return batch  # `__getitems__` already gives the batch


class EpochOrder:
    """Batch sampler of the step loop: each pass draws a new permutation from `generator` when it
    starts (after the previous pass's batches were used), then cuts it into batches."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator)
        for start in range(0, self.n, self.batch_size):
            yield order[start : start + self.batch_size].tolist()


def in_order(indices: Sequence[int] | torch.Tensor, batch_size: int) -> list[list[int]]:
    """`indices` cut into consecutive batches (a batch sampler for one pass without shuffling)."""
    flat = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    return [flat[s : s + batch_size] for s in range(0, len(flat), batch_size)]


def pixel_batches(
    batch: Batch,
    side: int,
    batches: Iterable[list[int]],
    *,
    device: torch.device,
    workers: int = 0,
    keep_workers: bool = False,
) -> PixelBatches:
    """A loader of (uint8 images (B, C, S, S), labels (B,)) on the CPU, one per list of indices in
    `batches`, in that order.

    Args:
        batch: in memory (sliced here, `workers` is ignored) or on disk (read by `workers`
            processes; 0 reads in this process).
        side: the model's side.
        batches: a batch sampler (lists of indices), e.g. `EpochOrder` or `in_order(...)`.
        device: where the batches go next; CUDA gets pinned memory.
        keep_workers: keep the reader processes between passes (the step loop's epochs).
    """
    streamed = isinstance(batch, FileBatch) and workers > 0 and not _daemonic()
    loader = DataLoader(
        _Reader(batch, side),
        batch_sampler=batches,  # type: ignore[arg-type]  # any iterable of index lists works
        num_workers=workers if streamed else 0,
        collate_fn=_as_is,
        pin_memory=device.type == "cuda",
        persistent_workers=streamed and keep_workers,
        prefetch_factor=2 if streamed else None,
    )  # torch gives each reader process one thread, leaving the cores to training
    return PixelBatches(loader)
