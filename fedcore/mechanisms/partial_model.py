"""Block layouts: a client model that holds only some of the global model's blocks (LEFF).

A LEFF client holds [student blocks standing in for the blocks before its window, its window of real
blocks, student blocks for the blocks after]. Its model is built from the architecture's config with that
smaller depth, and only the tensors it needs are read from the local checkpoint (the embeddings; the
server sends blocks and head), so client memory scales with what the client holds rather than with the
full model. ``sources[j]`` names the global block that local block ``j`` is, or -1 for a student.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from fedcore.config import RunConfig
from fedcore.core.layers import EMBED, LayerMap, block_group, block_of_group
from fedcore.mechanisms.frozen_precision import FROZEN_DTYPES
from fedcore.model import ModelLoadError, apply_tuning, load_tokenizer, model_location

STUDENT = -1


def to_local(
    state: Mapping[str, torch.Tensor], layer_map: LayerMap, sources: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Global names -> local names, keeping only the blocks the layout holds as real blocks."""
    position = {source: local for local, source in enumerate(sources) if source != STUDENT}
    local: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        index = layer_map.block_index(name)
        if index is None:
            local[name] = tensor
        elif index in position:
            local[layer_map.with_block_index(name, position[index])] = tensor
    return local


def to_global(
    state: Mapping[str, torch.Tensor], layer_map: LayerMap, sources: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Local names -> global names; a student block has no global name and must not be in ``state``."""
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        index = layer_map.block_index(name)
        if index is None:
            renamed[name] = tensor
        elif sources[index] == STUDENT:
            raise ValueError(f"{name} belongs to a student block, which has no global counterpart")
        else:
            renamed[layer_map.with_block_index(name, sources[index])] = tensor
    return renamed


def local_groups(groups: Sequence[str], sources: Sequence[int]) -> tuple[str, ...]:
    """Global group names ("block.7", "head") -> the client's own ("block.1", "head")."""
    position = {source: local for local, source in enumerate(sources) if source != STUDENT}
    local = []
    for group in groups:
        block = block_of_group(group)
        if block is None:
            local.append(group)
        elif block in position:
            local.append(block_group(position[block]))
    return tuple(local)


def student_state(students: Sequence[nn.Module], first_position: int, layer_map: LayerMap) -> dict:
    """Parameters of student blocks under the local names they take at ``first_position`` onwards."""
    state: dict[str, torch.Tensor] = {}
    for offset, block in enumerate(students):
        for inner, tensor in block.named_parameters():
            state[layer_map.block_param_name(first_position + offset, inner)] = tensor.detach()
    return state


@dataclass(frozen=True)
class Layout:
    """Which global block each block of a client's model is, and the name switching that follows from it.

    The client trains and stores under its model's own (local) names; the server, personal state and
    uploads use global names. For a client holding the full model both are the same and every method
    is the identity.
    """

    layer_map: LayerMap
    #: ``sources[j]``: the global block that local block ``j`` is, or STUDENT
    sources: tuple[int, ...]

    @classmethod
    def for_plan(cls, layer_map: LayerMap, block_sources: Sequence[int]) -> Layout:
        """The layout a plan names; a plan without block sources means the full model."""
        return cls(layer_map, tuple(block_sources) or tuple(range(layer_map.num_blocks)))

    def to_local(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return to_local(state, self.layer_map, self.sources)

    def to_global(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return to_global(state, self.layer_map, self.sources)

    def local_groups(self, groups: Sequence[str]) -> tuple[str, ...]:
        return local_groups(groups, self.sources)

    def student_state(self, students: Sequence[nn.Module], first_position: int) -> dict[str, torch.Tensor]:
        return student_state(students, first_position, self.layer_map)


def _checkpoint_files(location: str) -> list[Path]:
    files = sorted(Path(location).glob("*.safetensors")) if Path(location).is_dir() else []
    if not files:
        raise ModelLoadError(
            f"model.name: LEFF clients read embeddings from a local safetensors checkpoint; "
            f"'{location}' has none (use a local directory or an embedded asset)"
        )
    return files


def _outside_blocks_in_float32(model: nn.Module, layer_map: LayerMap) -> None:
    """Embeddings, final norm, head and their buffers back in float32: only blocks are ever held lower."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if layer_map.block_index(name) is None and tensor.is_floating_point():
                tensor.data = tensor.data.float()


def build_layout_model(cfg: RunConfig, num_labels: int, depth: int, frozen_dtype: str = "") -> nn.Module:
    """A model of ``depth`` blocks with the checkpoint's embeddings; blocks and head come from the server.

    With ``frozen_dtype`` the blocks are created in that dtype (every block starts frozen; the executor
    puts each round's window back in float32), so the full-precision blocks never exist at once.
    """
    location = model_location(cfg.model)
    config = AutoConfig.from_pretrained(location)
    config.num_hidden_layers = depth
    torch.manual_seed(cfg.seed)
    dtype = FROZEN_DTYPES[frozen_dtype] if frozen_dtype else torch.float32
    if cfg.model.task == "seq-cls":
        config.num_labels = num_labels
        if config.pad_token_id is None:
            config.pad_token_id = load_tokenizer(cfg.model).pad_token_id
        model = AutoModelForSequenceClassification.from_config(config, torch_dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    layer_map = LayerMap(model)
    if frozen_dtype:
        _outside_blocks_in_float32(model, layer_map)
    params = dict(model.named_parameters())
    prefix = f"{model.base_model_prefix}."
    loaded: set[str] = set()
    with torch.no_grad():
        for path in _checkpoint_files(location):
            try:
                with safe_open(str(path), framework="pt") as checkpoint:
                    for key in checkpoint.keys():  # noqa: SIM118 (safe_open is not a mapping)
                        name = key if key in params else prefix + key
                        if name in params and layer_map.group_of(name) == EMBED:
                            params[name].copy_(checkpoint.get_tensor(key).to(params[name].dtype))
                            loaded.add(name)
            except (OSError, SafetensorError) as exc:
                raise ModelLoadError(f"model.name: cannot read checkpoint {path}: {exc}") from None
    missing = [n for n in params if layer_map.group_of(n) == EMBED and n not in loaded]
    if missing:
        raise ModelLoadError(f"model.name: checkpoint {location} lacks embedding tensors {missing[:3]}")
    return apply_tuning(model, "full", cfg.tuning, cfg.model.task)
