"""The LDA head from class statistics (learner.head): its maths, its store round trip, its use."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from learner.config import LoRAConfig, TrainConfig
from learner.data import LabeledBatch
from learner.head import ClassStatistics, cosine_head, fit_temperature, linear_logits
from learner.methods import get_method
from learner.state import LearnerState, build_model
from learner.train import evaluate, learn_task
from tests.conftest import TINY_BACKBONES


def _gaussian_classes(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes on the unit sphere in 3-d, their shared noise correlated with their difference.

    The class means differ along axis 1; large noise runs along (1, 1, 0)/√2, so half of it falls
    on axis 1. Cosine to the class means is fooled by that noise; LDA whitens it away.
    """
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64) * 0.6
    x = 0.03 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    x += noise * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(2)
    x[:, 1] += torch.where(labels == 0, -0.12, 0.12)
    x[:, 2] += 1.0
    return F.normalize(x, dim=-1), labels


def test_statistics_added_task_by_task_equal_those_of_all_data() -> None:
    f, y = _gaussian_classes()
    f2 = f.flip(1)  # a second "task" with different features
    both = ClassStatistics.empty(3).added(f, y, 2).added(f2, y, 2)
    assert both.num_classes == 4 and both.count == 2 * len(y)
    means = torch.stack([x[y == c].mean(0) for x in (f, f2) for c in (0, 1)])
    assert torch.allclose(both.means, means, atol=1e-12)
    centred = torch.cat([f - means[y], f2 - means[y + 2]])
    assert torch.allclose(both.scatter, centred.T @ centred, atol=1e-10)


def test_lda_logits_are_gaussian_log_posteriors() -> None:
    f, y = _gaussian_classes()
    stats = ClassStatistics.empty(3).added(f, y, 2)
    weight, bias = stats.lda_head(0.0)
    cov = stats.covariance(0.0) + 1e-6 * torch.eye(3, dtype=torch.float64)
    dists = [torch.distributions.MultivariateNormal(m, cov) for m in stats.means]
    x = f[:10]
    logits = linear_logits(x.float(), weight, bias).double()
    log_ratio = dists[1].log_prob(x) - dists[0].log_prob(x)
    assert torch.allclose(logits[:, 1] - logits[:, 0], log_ratio, atol=1e-3, rtol=1e-4)


def test_shrinkage_moves_the_covariance_toward_a_scaled_identity() -> None:
    f, y = _gaussian_classes()
    stats = ClassStatistics.empty(3).added(f, y, 2)
    raw, full = stats.covariance(0.0), stats.covariance(1.0)
    assert torch.allclose(full, torch.trace(raw) / 3 * torch.eye(3, dtype=torch.float64))
    half = stats.covariance(0.5)
    assert torch.allclose(half, 0.5 * raw + 0.5 * full)


def test_lda_separates_classes_that_cosine_prototypes_confuse() -> None:
    f, y = _gaussian_classes()
    stats = ClassStatistics.empty(3).added(f, y, 2)
    test_f, test_y = _gaussian_classes(2000)
    lda_acc = (linear_logits(test_f.float(), *stats.lda_head(0.1)).argmax(1) == test_y).float()
    cos_w, cos_b = cosine_head(stats.means)
    cos_acc = (linear_logits(test_f.float(), cos_w, cos_b).argmax(1) == test_y).float()
    assert lda_acc.mean() > 0.9
    assert cos_acc.mean() < lda_acc.mean() - 0.1


@pytest.mark.parametrize("true_t", [0.2, 1.0, 8.0])
def test_fitted_temperature_recovers_the_one_that_made_the_labels(true_t: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(20000, 5, generator=g)
    targets = torch.multinomial(torch.softmax(logits / true_t, dim=1), 1, generator=g).flatten()
    assert fit_temperature(logits, targets) == pytest.approx(true_t, rel=0.05)


def test_temperature_keeps_the_argmax_and_lowers_the_loss() -> None:
    f, y = _gaussian_classes()
    logits = linear_logits(f.float(), *ClassStatistics.empty(3).added(f, y, 2).lda_head(0.1))
    t = fit_temperature(logits, y)
    assert t != 1.0 and torch.equal((logits / t).argmax(1), logits.argmax(1))
    assert F.cross_entropy(logits / t, y) < F.cross_entropy(logits, y)


def test_a_class_without_samples_is_refused() -> None:
    f, y = _gaussian_classes()
    with pytest.raises(ValueError, match=r"class index \[2\]"):
        ClassStatistics.empty(3).added(f, y, 3)


def _cfg(**kw: object) -> TrainConfig:
    settings: dict[str, object] = dict(
        method=get_method("janus"), lora=LoRAConfig(rank=2, alpha=2), epochs=1, design_samples=64
    )
    return TrainConfig(**{**settings, "augment": False, **kw})  # type: ignore[arg-type]


def _tasks(digits: LabeledBatch) -> tuple[LabeledBatch, LabeledBatch]:
    first = digits.select_classes(["digit0", "digit1", "digit2"]).subset(range(120))
    second = digits.select_classes(["digit3", "digit4"]).subset(range(80))
    return first, second


def test_every_row_is_recomputed_from_the_pooled_statistics(digits: LabeledBatch) -> None:
    state = LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=2, alpha=2))
    first, second = _tasks(digits)
    one = learn_task(state, first, _cfg()).state
    result = learn_task(one, second, _cfg())
    two, temperature = result.state, result.metrics["head_temperature"]
    assert two.class_stats is not None and two.head_weight is not None
    assert two.class_stats.num_classes == 5 and two.class_stats.count == len(first) + len(second)
    weight, bias = two.class_stats.lda_head(_cfg().head_shrinkage)
    assert temperature > 0
    assert torch.allclose(two.head_weight * temperature, weight, rtol=1e-5)
    assert torch.allclose(two.head_bias * temperature, bias, rtol=1e-5)
    assert one.class_stats is not None
    assert torch.equal(two.class_stats.means[:3], one.class_stats.means)  # old means kept
    assert not torch.allclose(two.head_weight[:3], one.head_weight)  # old rows re-solved
    assert torch.allclose(two.prototypes, F.normalize(two.class_stats.means, dim=-1).float())


def test_statistics_and_bias_survive_the_store_format(digits: LabeledBatch) -> None:
    state = LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=2, alpha=2))
    result = learn_task(state, _tasks(digits)[0], _cfg())
    tensors = result.state.to_tensors()
    assert set(tensors["head"]) == {"weight", "bias"}
    assert {"means", "scatter", "count"} <= set(tensors["prototypes"])
    restored = LearnerState.from_tensors(result.state.meta(), result.state.adapters, tensors)
    assert restored.class_stats is not None and result.state.class_stats is not None
    assert torch.equal(restored.class_stats.scatter, result.state.class_stats.scatter)
    assert restored.class_stats.count == result.state.class_stats.count
    assert restored.head_bias is not None and result.state.head_bias is not None
    assert torch.equal(restored.head_bias, result.state.head_bias)


def test_an_older_cosine_head_still_serves(digits: LabeledBatch) -> None:
    """Versions published before the bias: weight rows and a scale; they load as scale · cos."""
    state = LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=2, alpha=2))
    result = learn_task(state, _tasks(digits)[0], _cfg())
    tensors = result.state.to_tensors()
    rows = torch.randn(3, result.model.num_features)
    tensors["head"] = {"weight": rows, "scale": torch.tensor([16.0])}
    tensors["prototypes"] = {"prototypes": result.state.prototypes}
    old = LearnerState.from_tensors(result.state.meta(), result.state.adapters, tensors)
    model = build_model(old)
    f = torch.randn(4, result.model.num_features)
    expected = 16.0 * F.normalize(f, dim=-1) @ F.normalize(rows, dim=-1).T
    assert torch.allclose(model.head(f), expected, atol=1e-5)
    with pytest.raises(ValueError, match="before the learner kept class statistics"):
        learn_task(old, _tasks(digits)[1], _cfg())


@pytest.mark.parametrize("head", ["prototype", "trained"])
def test_cosine_heads_grow_by_the_new_rows(head: str, digits: LabeledBatch) -> None:
    state = LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=2, alpha=2))
    method = get_method("janus").model_copy(update={"head": head})
    first, second = _tasks(digits)
    one = learn_task(state, first, _cfg(method=method)).state
    two = learn_task(one, second, _cfg(method=method))
    assert one.head_weight is not None and two.state.head_weight is not None
    assert torch.equal(two.state.head_weight[:3], one.head_weight)  # old rows untouched
    assert torch.equal(two.state.head_bias, torch.zeros(5))
    assert torch.allclose(two.state.head_weight.norm(dim=1), torch.full((5,), 16.0))
    if head == "prototype":
        assert torch.allclose(two.state.head_weight, 16.0 * two.state.prototypes, atol=1e-5)
    assert math.isfinite(evaluate(two.model, second, two.state.class_names))


def test_frozen_reference_trains_nothing_and_still_classifies(digits: LabeledBatch) -> None:
    state = LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=2, alpha=2))
    first = _tasks(digits)[0]
    result = learn_task(state, first, _cfg(method=get_method("frozen")))
    assert result.metrics["steps"] == 0
    assert all(s.basis.shape[1] == 0 for s in result.state.subspace.values())  # nothing protected
    x = torch.rand(4, 3, 32, 32)
    pristine = build_model(state)
    with torch.no_grad():
        assert torch.allclose(result.model.features(x), pristine.features(x), atol=1e-6)
    assert evaluate(result.model, first, result.state.class_names) > 50.0  # 3 classes: chance 33
