"""LEFF block importance and window sampling.

Importance must be exactly the paper's sum of (g * theta)^2 per block, whatever the tuning currently
freezes, and must leave the model untouched (the server keeps using it). Sampling must follow the window
scores, and the baselines must cover every window.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn

from fedcore.core.layers import LayerMap
from fedcore.data.batching import Batch, make_batches
from fedcore.methods.leff.importance import (
    block_importance,
    choose_window,
    window_probabilities,
    window_scores,
)
from fedcore.model import build_model
from tests.conftest import tiny_run_config

TEXTS = ["good film", "awful boring plot and bad acting", "the best movie", "a dull story", "fun"]


def _model_and_batches(model_dir: Path, tmp_path: Path, task: str) -> tuple[nn.Module, list[Batch]]:
    model, tokenizer = build_model(
        tiny_run_config(model_dir, tmp_path, method="fedavg", **{"model.task": task}), num_labels=2
    )
    table = Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 0, 1]})
    return model, make_batches(table, tokenizer, task, max_length=32, batch_size=2)


def _hand_importance(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor]) -> list[float]:
    """The definition, on a private copy: every block parameter requires grad, sum (g * theta)^2."""
    model = copy.deepcopy(model).eval()
    layer_map = LayerMap(model)
    for param in model.parameters():
        param.requires_grad_(True)
    loss_of(model).backward()
    scores = [0.0] * layer_map.num_blocks
    for name, param in model.named_parameters():
        group = layer_map.group_of(name)
        if group.startswith("block."):
            scores[int(group.split(".")[1])] += float(((param.grad * param.detach()) ** 2).sum())
    return scores


def _unlabelled(batches: list[Batch]) -> list[Batch]:
    return [{k: v for k, v in batch.items() if k != "labels"} for batch in batches]


def test_importance_is_sum_of_squared_grad_times_weight(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Matches the hand computation and leaves requires_grad flags, .grad tensors and train mode as found."""
    model, batches = _model_and_batches(tiny_models["bert"], tmp_path, "seq-cls")
    model.train()
    sentinel = torch.ones_like(model.classifier.weight)
    model.classifier.weight.grad = sentinel
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not all(flags.values()), "fedavg freezes the embeddings: the test needs some frozen parameters"

    expected = _hand_importance(model, lambda m: sum(m(**b).loss for b in batches) / len(batches))
    got = block_importance(model, batches, "seq-cls")

    assert len(got) == 4 and all(score > 0 for score in got)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert model.classifier.weight.grad is sentinel
    assert all(p.grad is None for name, p in model.named_parameters() if name != "classifier.weight")
    assert model.training and all(m.training for m in model.modules())


def test_unlabelled_classifier_uses_prediction_entropy(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model, batches = _model_and_batches(tiny_models["bert"], tmp_path, "seq-cls")
    unlabelled = _unlabelled(batches)

    def entropy(m: nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for batch in unlabelled:
            probs = torch.softmax(m(**batch).logits, dim=-1)
            total = total - (probs * probs.log()).sum(-1).mean()
        return total / len(unlabelled)

    got = block_importance(model, unlabelled, "seq-cls")
    np.testing.assert_allclose(got, _hand_importance(model, entropy), rtol=1e-5)


def test_causal_lm_importance_labelled_or_not(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Unlabelled text on an LM scores with the LM loss on the text itself: same as make_batches' labels."""
    model, batches = _model_and_batches(tiny_models["llama"], tmp_path, "causal-lm")
    labelled = block_importance(model, batches, "causal-lm")
    assert len(labelled) == 4 and all(np.isfinite(labelled)) and min(labelled) > 0
    np.testing.assert_allclose(
        block_importance(model, _unlabelled(batches), "causal-lm"), labelled, rtol=1e-6
    )


def test_window_scores_sum_contiguous_blocks() -> None:
    importance = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert window_scores(importance, 1) == importance
    assert window_scores(importance, 2) == [3.0, 5.0, 7.0, 9.0]
    assert window_scores(importance, 5) == [15.0]
    for width in (0, 6):
        with pytest.raises(ValueError, match="1..5"):
            window_scores(importance, width)


def test_window_probabilities_follow_scores_and_are_scale_free() -> None:
    scores = [3.0, 9.0, 5.0, 1.0]
    probs = window_probabilities(scores, temperature=0.5)
    assert sum(probs) == pytest.approx(1.0)
    assert np.argsort(probs).tolist() == np.argsort(scores).tolist()
    np.testing.assert_allclose(window_probabilities([s * 1e6 for s in scores], 0.5), probs)
    assert max(window_probabilities(scores, 0.1)) > max(probs) > max(window_probabilities(scores, 5.0))
    assert window_probabilities([0.0, 0.0], 1.0) == [0.5, 0.5]
    with pytest.raises(ValueError, match="temperature"):
        window_probabilities(scores, 0.0)


@pytest.mark.parametrize(("num_blocks", "width"), [(8, 2), (5, 2), (6, 4), (30, 7)])
def test_round_robin_trains_every_block(num_blocks: int, width: int) -> None:
    """Consecutive rounds tile the depth: within ceil(L / width) rounds every block is in some window."""
    importance = [1.0] * num_blocks
    steps = -(-num_blocks // width)
    starts = [
        choose_window("round-robin", importance, width, np.random.default_rng(0), r, 0, 1.0)
        for r in range(1, steps + 1)
    ]
    covered = {block for start in starts for block in range(start, start + width)}
    assert covered == set(range(num_blocks))
    assert all(0 <= s <= num_blocks - width for s in starts)
    shifted = choose_window("round-robin", importance, width, np.random.default_rng(0), 1, 1, 1.0)
    assert shifted == starts[1]


def test_random_and_importance_sampling() -> None:
    importance = [0.1, 0.2, 5.0, 4.0, 0.1, 0.3]
    rng = np.random.default_rng(0)
    uniform = Counter(choose_window("random", importance, 2, rng, 1, 0, 1.0) for _ in range(500))
    assert sorted(uniform) == list(range(5))

    draws = Counter(choose_window("importance", importance, 2, rng, 1, 0, 0.2) for _ in range(500))
    assert draws.most_common(1)[0][0] == int(np.argmax(window_scores(importance, 2)))
    again = [
        choose_window("importance", importance, 2, np.random.default_rng(7), 1, 0, 0.2) for _ in range(3)
    ]
    assert len(set(again)) == 1  # same generator state, same draw


def test_unknown_strategy_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="importance, random, round-robin, least-trained"):
        choose_window("greedy", [1.0, 2.0], 1, np.random.default_rng(0), 1, 0, 1.0)


def test_least_trained_evens_out_how_often_each_block_is_trained() -> None:
    """Windows of mixed widths under least-trained cover every block equally often (within one window),
    where draws over window starts train the end blocks several times less often than the middle."""
    num_blocks, widths = 30, [5, 10, 15, 5]
    importance = [1.0] * num_blocks
    trained = [0] * num_blocks
    for round_number in range(1, 11):
        for index, width in enumerate(widths):
            start = choose_window(
                "least-trained",
                importance,
                width,
                np.random.default_rng(0),
                round_number,
                index,
                1.0,
                trained,
            )
            assert 0 <= start <= num_blocks - width
            for block in range(start, start + width):
                trained[block] += 1
    assert max(trained) - min(trained) <= max(widths) // 5 + 1
    rng = np.random.default_rng(0)
    drawn = [0] * num_blocks
    for _ in range(10):
        for width in widths:
            start = choose_window("random", importance, width, rng, 1, 0, 1.0)
            for block in range(start, start + width):
                drawn[block] += 1
    assert drawn[-1] < min(trained) and drawn[0] < min(trained)


def test_least_trained_breaks_ties_by_importance_and_checks_the_counts() -> None:
    importance = [0.1, 0.2, 5.0, 4.0, 0.1, 0.3]
    assert choose_window("least-trained", importance, 2, np.random.default_rng(0), 1, 0, 1.0) == 2
    assert (
        choose_window("least-trained", importance, 2, np.random.default_rng(0), 1, 0, 1.0, [0, 0, 3, 3, 0, 0])
        == 4  # blocks 0-1 and 4-5 both untrained: the higher score (0.4 against 0.3) wins
    )
    with pytest.raises(ValueError, match="trained counts"):
        choose_window("least-trained", importance, 2, np.random.default_rng(0), 1, 0, 1.0, [0, 0])
