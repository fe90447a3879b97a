"""Labeled image batches: the batch, its loading, the one image path, and splits.

| module | what |
|---|---|
| `batch` | `LabeledBatch` (uint8 images N×H×W×C, int64 labels, class names), `DataError` |
| `images` | the one path from image bytes to model input, shared with the service |
| `files` | `FileBatch`: image files with labels, decoded at the model's side when read |
| `loading` | `load_batch`, `open_batch`: class-folder trees, zip/tar archives of one, `.npz` |
| `archives` | safe extraction of zip and tar archives |
| `fashion_mnist` | Fashion-MNIST from its IDX files |
| `cifar100` | CIFAR-100 from its binary version (for users who have it; nothing downloads) |
| `splits` | stratified hold-out, per-class caps, class-incremental task splits |

Only numpy and PIL: importing this package loads no torch.
"""

from learner.data.batch import DataError, LabeledBatch
from learner.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist
from learner.data.files import Batch, FileBatch, concatenate, in_memory
from learner.data.loading import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    list_images,
    load_batch,
    open_batch,
    write_class_folders,
)
from learner.data.splits import (
    Task,
    class_incremental_split,
    holdout_mask,
    holdout_split,
    per_class_limit,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "Batch",
    "DataError",
    "FileBatch",
    "ImageFiles",
    "LabeledBatch",
    "Task",
    "class_incremental_split",
    "concatenate",
    "holdout_mask",
    "holdout_split",
    "in_memory",
    "list_images",
    "load_batch",
    "load_fashion_mnist",
    "open_batch",
    "per_class_limit",
    "write_class_folders",
]
