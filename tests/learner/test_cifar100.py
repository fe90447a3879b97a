"""CIFAR-100's binary version, from tiny files written here in the official record format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learner.data import DataError
from learner.data.cifar100 import RECORD_BYTES, find_cifar100, load_cifar100

NAMES = [f"class_{i:02d}" for i in range(100)]


def _write(folder: Path, split: str, images: np.ndarray, fine: np.ndarray) -> None:
    """Records as the official files hold them: coarse, fine, then R, G, B planes row by row."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3·1024)
    coarse = (fine // 5).astype(np.uint8)[:, None]
    records = np.concatenate([coarse, fine.astype(np.uint8)[:, None], planes], axis=1)
    (folder / f"{split}.bin").write_bytes(records.tobytes())


@pytest.fixture
def cifar(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    fine = np.array([3, 99, 0, 3, 42, 0])
    _write(folder, "train", images, fine)
    _write(folder, "test", images[:2], fine[:2])
    (folder / "fine_label_names.txt").write_text("\n".join(NAMES) + "\n")
    return folder, images, fine


def test_loads_images_labels_and_names(cifar) -> None:
    folder, images, fine = cifar
    batch = load_cifar100(folder.parent, "train")  # the folder holding cifar-100-binary/ too
    assert batch.images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(batch.images, images)  # planes back to pixels, channels last
    np.testing.assert_array_equal(batch.labels, fine)
    assert batch.class_names == tuple(NAMES)
    assert len(load_cifar100(folder, "test")) == 2
    assert find_cifar100(folder.parent) == folder and find_cifar100(folder / "x") is None


def test_a_truncated_file_is_one_line_naming_it(cifar) -> None:
    folder, _, _ = cifar
    raw = (folder / "train.bin").read_bytes()
    (folder / "train.bin").write_bytes(raw[: 2 * RECORD_BYTES + 7])
    with pytest.raises(DataError, match=r"train\.bin: .*truncated") as err:
        load_cifar100(folder)
    assert "\n" not in str(err.value)


def test_an_impossible_label_or_name_list_is_refused(cifar) -> None:
    folder, images, _ = cifar
    _write(folder, "test", images[:1], np.array([100]))
    with pytest.raises(DataError, match=r"test\.bin: fine label 100"):
        load_cifar100(folder, "test")
    (folder / "fine_label_names.txt").write_text("\n".join(NAMES[:99]))
    with pytest.raises(DataError, match=r"fine_label_names\.txt: 99 names"):
        load_cifar100(folder)
    (folder / "fine_label_names.txt").unlink()
    with pytest.raises(DataError, match=r"fine_label_names\.txt: cannot read"):
        load_cifar100(folder)


def test_the_benchmark_reads_a_cifar100_folder_with_its_own_test_split(tmp_path: Path) -> None:
    from learner.bench import BenchConfig, BenchPreset, load_split

    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    rng = np.random.default_rng(1)
    fine = np.repeat(np.arange(100), 5)  # 5 training images per class
    _write(folder, "train", rng.integers(0, 256, (500, 32, 32, 3), dtype=np.uint8), fine)
    _write(
        folder, "test", rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), fine[::5].repeat(2)
    )
    (folder / "fine_label_names.txt").write_text("\n".join(NAMES))
    cfg = BenchConfig(data=str(tmp_path), preset=BenchPreset(4, 1, 1, 16, tasks=10))
    split = load_split(cfg)
    assert len(split.test) == 10 and all(len(t.class_names) == 10 for t in split.test)
    assert {n for t in split.test for n in t.class_names} == set(NAMES)
    first = split.test[0]
    assert len(first.test) == 10  # test.bin's images, one per class (the preset's cap)
    assert first.train.images.shape[1:3] == (16, 16)  # resized to the preset's side
    assert len(first.train) + len(split.val[0].test) == 40  # 4 per class, 20 % for validation


def test_the_paper_preset_runs_quick_on_a_generated_cifar100_folder(tmp_path: Path) -> None:
    """`janus bench cl --preset paper-cifar100 --data DIR --quick --device cpu`, with a tiny
    random backbone instead of ViT-B/16 (`--backbone`): the paper's settings, 224 px, 10 tasks."""
    import json

    from learner.bench import PRESETS
    from service.cli import PRESET_NAMES, main

    assert tuple(PRESETS) == PRESET_NAMES  # the CLI's copy of the names
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    rng = np.random.default_rng(2)
    fine = np.repeat(np.arange(100), 10)
    _write(folder, "train", rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8), fine)
    _write(folder, "test", rng.integers(0, 256, (500, 32, 32, 3), dtype=np.uint8), fine[::2])
    (folder / "fine_label_names.txt").write_text("\n".join(NAMES))
    out = tmp_path / "out"
    args = ["bench", "cl", "--preset", "paper-cifar100", "--data", str(tmp_path), "--quick"]
    args += ["--device", "cpu", "--backbone", "test_efficientnet", "--methods", "janus"]
    args += ["--no-tune", "--seeds", "1", "--jobs", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    config, janus = results["config"], results["methods"]["janus"]
    assert config["preset"] == "paper-cifar100" and config["quick"]
    assert config["preset_image_size"] == 224 and len(config["tasks"]) == 10
    assert config["lora"]["rank"] == 10 and config["backbone"]["name"] == "test_efficientnet"
    assert config["train"]["batch_size"] == 128 and config["train"]["gr_lr"] == 5e-4
    assert config["test_sizes"] == [40] * 10  # --quick: 4 test images per class
    assert len(janus["matrix"]) == 10 and 0 <= janus["acc"] <= 100


def test_a_paper_preset_refuses_data_of_another_benchmark(tmp_path: Path, capsys, cifar) -> None:
    from service.cli import main

    folder, _, _ = cifar
    args = ["bench", "cl", "--preset", "paper-imagenet-r", "--data", str(folder), "--quick"]
    code = main([*args, "--device", "cpu", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert "needs imagenet-r data" in err and "is cifar100" in err
