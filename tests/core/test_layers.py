"""Layer addressing and tuning modes on every supported architecture, plain and LoRA-wrapped.

Every parameter must land in exactly one group ("embed", "block.<i>", "head"), and each tuning mode must
mark exactly the parameters it promises as trainable: the aggregator and the planners rely on both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from torch import nn

from fedcore.core.layers import EMBED, HEAD, LayerMap, block_group, block_of_group
from fedcore.model import ModelLoadError, build_model, tunable_names
from tests.conftest import ARCHITECTURES, tiny_run_config

NUM_BLOCKS = 4
DECODERS = ["gpt2", "llama", "qwen2"]
#: name suffixes of the word and position embeddings (Llama/Qwen2 use rotary positions: no parameter)
EMBEDDINGS = {
    "bert": ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"],
    "roberta": ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"],
    "deberta-v2": ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"],
    "mpnet": [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "encoder.relative_attention_bias.weight",
    ],
    "gpt2": ["transformer.wte.weight", "transformer.wpe.weight"],
    "llama": ["model.embed_tokens.weight"],
    "qwen2": ["model.embed_tokens.weight"],
}
#: the sequence-classification head module of each architecture
CLASSIFIER = {
    "bert": "classifier",
    "roberta": "classifier",
    "deberta-v2": "classifier",
    "mpnet": "classifier",
    "gpt2": "score",
    "llama": "score",
    "qwen2": "score",
}
#: (arch, method, task) for every combination a run may use (BitFit on Llama is refused, tested below)
TUNING_CASES = [
    (arch, method, task)
    for arch in ARCHITECTURES
    for task in (["seq-cls", "causal-lm"] if arch in DECODERS else ["seq-cls"])
    for method in ("fedavg", "fedlora", "fedbitfit")
    if not (arch == "llama" and method == "fedbitfit")
]

Builder = Callable[..., nn.Module]


@pytest.fixture(scope="module")
def build(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Builder:
    """Build (and cache, these tests only read) the model of an architecture, method and task."""
    output_dir = tmp_path_factory.mktemp("layers-out")
    cache: dict[tuple[str, str, str], nn.Module] = {}

    def _build(arch: str, method: str = "fedavg", task: str = "seq-cls") -> nn.Module:
        key = (arch, method, task)
        if key not in cache:
            cfg = tiny_run_config(tiny_models[arch], output_dir, method=method, **{"model.task": task})
            cache[key] = build_model(cfg, num_labels=2)[0]
        return cache[key]

    return _build


def _groups(model: nn.Module) -> dict[str, str]:
    layer_map = LayerMap(model)
    return {name: layer_map.group_of(name) for name, _ in model.named_parameters()}


@pytest.mark.parametrize("method", ["fedavg", "fedlora"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_parameter_has_one_group(build: Builder, arch: str, method: str) -> None:
    """4 blocks found; each parameter maps to one known group, blocks by their index, all blocks equal."""
    model = build(arch, method)
    layer_map = LayerMap(model)
    assert layer_map.num_blocks == NUM_BLOCKS
    assert layer_map.all_groups() == [EMBED, *(block_group(i) for i in range(NUM_BLOCKS)), HEAD]
    groups = _groups(model)
    assert set(groups.values()) == set(layer_map.all_groups())
    for name, group in groups.items():
        for i in range(NUM_BLOCKS):
            in_block = name.startswith(f"{layer_map.blocks_path}.{i}.")
            assert in_block == (group == block_group(i)), name
    sizes = dict(model.named_parameters())
    block_sizes = {
        sum(sizes[n].numel() for n, g in groups.items() if g == block_group(i)) for i in range(NUM_BLOCKS)
    }
    assert len(block_sizes) == 1


@pytest.mark.parametrize("method", ["fedavg", "fedlora"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_embeddings_and_classifier_groups(build: Builder, arch: str, method: str) -> None:
    """Word/position embeddings are "embed"; the seq-cls classifier (and its LoRA copy) is "head"."""
    groups = _groups(build(arch, method))
    for suffix in EMBEDDINGS[arch]:
        matches = [n for n in groups if n.endswith(suffix)]
        assert len(matches) == 1, (suffix, matches)
        assert groups[matches[0]] == EMBED
    classifier = [n for n in groups if CLASSIFIER[arch] in n.split(".")]
    assert classifier
    assert {groups[n] for n in classifier} == {HEAD}


@pytest.mark.parametrize("method", ["fedavg", "fedlora"])
@pytest.mark.parametrize("arch", DECODERS)
def test_tied_lm_head_is_the_embedding(build: Builder, arch: str, method: str) -> None:
    """With tied embeddings the LM head is no separate parameter; the shared matrix is "embed"."""
    model = build(arch, method, "causal-lm")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    groups = _groups(model)
    assert not [n for n in groups if "lm_head" in n]
    embeds = [n for n in groups if n.endswith(EMBEDDINGS[arch][0])]
    assert len(embeds) == 1
    assert groups[embeds[0]] == EMBED


def _expected_tunable(model: nn.Module, method: str, task: str) -> set[str]:
    groups = _groups(model)
    if method == "fedavg":
        return {n for n, g in groups.items() if g != EMBED}
    if method == "fedlora":
        return {
            n
            for n in groups
            if {"lora_A", "lora_B"} & set(n.split("."))
            or (task == "seq-cls" and "modules_to_save" in n.split("."))
        }
    return {
        n
        for n, g in groups.items()
        if g != EMBED and (n.endswith(".bias") or (task == "seq-cls" and g == HEAD))
    }


@pytest.mark.parametrize(("arch", "method", "task"), TUNING_CASES)
def test_tuning_mode_marks_exactly_its_parameters(build: Builder, arch: str, method: str, task: str) -> None:
    """full: all but embed; lora: adapters + the head's trainable copy; bitfit: biases (+ seq-cls head)."""
    model = build(arch, method, task)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    names = tunable_names(model)
    assert len(names) == len(set(names))
    assert set(names) == trainable
    assert trainable == _expected_tunable(model, method, task)
    groups = _groups(model)
    if method == "fedlora":
        assert any("lora_A" in n for n in trainable)
        copies = {n for n in trainable if "modules_to_save" in n}
        assert bool(copies) == (task == "seq-cls")
        assert {groups[n] for n in copies} <= {HEAD}
    if method == "fedbitfit":
        assert any(n.endswith(".bias") for n in trainable)
        assert all(n.endswith(".bias") or (task == "seq-cls" and groups[n] == HEAD) for n in trainable)
    assert not [n for n in trainable if groups[n] == EMBED]


@pytest.mark.parametrize("task", ["seq-cls", "causal-lm"])
def test_bitfit_refused_without_biases(tiny_models: dict[str, Path], tmp_path: Path, task: str) -> None:
    """Llama has no bias parameters, so BitFit would train nothing in the blocks: a clear load error."""
    cfg = tiny_run_config(tiny_models["llama"], tmp_path, method="fedbitfit", **{"model.task": task})
    with pytest.raises(ModelLoadError, match="bitfit.*no bias"):
        build_model(cfg, num_labels=2)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_paper_bitfit_set_trains_every_bias_and_no_weight(
    tiny_models: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    """bitfit-set=biases: the LEFF paper's FedBitFit set; embedding-norm biases in, head weights out."""
    cfg = tiny_run_config(tiny_models[arch], tmp_path, method="fedbitfit", **{"tuning.bitfit-set": "biases"})
    model = build_model(cfg, num_labels=2)[0]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert set(tunable_names(model)) == trainable
    groups = _groups(model)
    assert not [n for n in trainable if groups[n] == HEAD and not n.endswith(".bias")]
    if arch == "bert":  # BERT's embedding LayerNorm has a bias; the default set leaves it out
        assert [n for n in trainable if groups[n] == EMBED]
    default = {n for n, p in _built(tiny_models, tmp_path, arch).named_parameters() if p.requires_grad}
    assert {n for n in default if groups[n] == HEAD and n.endswith(".weight")}
    assert default != trainable


def _built(tiny_models: dict[str, Path], tmp_path: Path, arch: str) -> nn.Module:
    cfg = tiny_run_config(tiny_models[arch], tmp_path / "default", method="fedbitfit")
    return build_model(cfg, num_labels=2)[0]


def test_group_names_parse_back_to_blocks() -> None:
    assert [block_of_group(block_group(i)) for i in range(3)] == [0, 1, 2]
    assert block_of_group(EMBED) is None and block_of_group(HEAD) is None
