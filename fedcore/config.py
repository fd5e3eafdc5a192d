"""Run configuration: one validated tree parsed from Flower's flat run config.

Flower hands the app a flat dict of dotted keys (``model.name``, ``train.lr``...). Every key is declared
with its default, type and allowed values, so a bad value stops the run before any training with one
message naming the key and what to type. Values are strict (``rounds=true`` or ``rounds="5"`` is refused,
not converted), numbers finite, and settings that contradict each other are refused together.
``pyproject.toml``'s ``[tool.flwr.app.config]`` mirrors these defaults (a test keeps the two in sync):
Flower only accepts ``--run-config`` overrides for keys listed there.

The shared sections live here; a method's own settings live beside it (``fedcore/methods/<method>/
config.py``) and are composed into ``RunConfig`` below, the one place that knows them all. Fields made
with ``project_option`` are this project's own, not in the papers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from fedcore.core.aggregators import Aggregator
from fedcore.core.devices import profile_names
from fedcore.core.drop_shapes import DropShape
from fedcore.methods.droppeft.config import DropPeftConfig
from fedcore.methods.leff.config import LeffConfig
from fedcore.methods.specs import METHODS, MethodSpec, TuningMode, method_spec
from fedcore.presets import PresetError, preset_values
from fedcore.section import Section, project_option

#: The shortest ``round.timeout``: a ClientApp needs 2-4 s to be ready to train before its first step,
#: so a shorter wait closes every round before any reply can arrive.
MIN_ROUND_TIMEOUT_S = 10.0

#: Keys that were renamed or removed: the message for a run config that still uses them.
MOVED_KEYS = {
    "drop.rates": "moved to droppeft.rates",
    "drop.shapes": "moved to droppeft.shapes",
    "drop.exploration": "moved to droppeft.exploration",
    "drop.discount": "moved to droppeft.discount",
    "drop.probe-examples": "moved to droppeft.probe-examples",
    "leff.proxy": "moved to proxy.name",
    "leff.proxy-examples": "moved to proxy.examples",
    "leff.distill-loss": "removed (the paper's mse loss is always used)",
    "drop.lr-compensation": "removed (measured no better than plain layer dropout)",
}


class ConfigError(ValueError):
    """A run configuration value is invalid; the message names the key and what is allowed."""


class ModelConfig(Section):
    name: str = Field(
        "embedded:all-MiniLM-L6-v2",
        description="'embedded:<asset>', a local model directory, or a hub id (needs network).",
    )
    task: Literal["seq-cls", "causal-lm"] = Field(
        "seq-cls", description="Sequence classification or causal language modelling."
    )
    max_length: int = Field(64, ge=8, le=8192, description="Tokens per example (truncation).")


class TuningConfig(Section):
    mode: Literal["auto", "full", "lora", "bitfit"] = Field(
        "auto", description="'auto' takes the method's own tuning (fedavg: full, fedlora: lora...)."
    )
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout inside LoRA adapters.")
    lora_targets: str = Field(
        "", description="Comma-separated module names; empty = the architecture's default (model.py)."
    )
    bitfit_set: Literal["biases-and-head", "biases"] = project_option(
        "biases-and-head",
        "bitfit: biases + the task head's weights, or every bias only (tuning.bitfit-set='biases': "
        "the LEFF paper's set).",
    )


#: ``data.name`` value for a federation in which every node trains on its own data (node config data-path)
NODE_DATA = "node"


class DataConfig(Section):
    name: str = Field(
        "embedded:rotten-tomatoes",
        description="'embedded:<asset>', a local .csv/.jsonl/.parquet file or saved dataset folder, a hub "
        "dataset id, or 'node' (every node trains on its own file, named by its node config's data-path).",
    )
    text_column: str = Field(
        "text",
        description="Text column of a local, hub or node dataset (causal-lm: a table without it but with "
        "prompt and response columns is chat data).",
    )
    label_column: str = Field(
        "label", description="Label column (any values; numbered in sorted order, or in data.labels order)."
    )
    labels: str = Field(
        "",
        description="The task's class names in label-id order, comma-separated (e.g. 'rotten,fresh'); rows "
        "with another label are refused. Empty = the shared dataset's own; required with data.name='node'.",
    )
    server_test: str = Field(
        "",
        description="With data.name='node': the server's own held-out file (empty = no server test metrics).",
    )
    partition: Literal["iid", "dirichlet", "natural"] = Field(
        "dirichlet", description="How rows are split over clients: iid, label skew, or by a column."
    )
    dirichlet_alpha: float = Field(
        1.0, gt=0, description="Dirichlet concentration; smaller = stronger label skew."
    )
    natural_column: str = Field("", description="Column whose values define natural partitions.")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="Server-held test split.")
    validation_fraction: float = Field(
        0.0, ge=0, lt=1, description="Server-held validation split from the pool, for tuning (0 = none)."
    )
    client_test_fraction: float = Field(0.2, ge=0, lt=1, description="Each client's local test split.")
    max_examples: int = Field(0, ge=0, description="Cap on examples read (0 = all).")

    @model_validator(mode="after")
    def _natural_needs_column(self) -> DataConfig:
        if self.partition == "natural" and not self.natural_column:
            raise ValueError("data.partition=natural needs data.natural-column (e.g. movie_name)")
        return self

    @model_validator(mode="after")
    def _server_test_needs_node_data(self) -> DataConfig:
        if self.server_test and self.name != NODE_DATA:
            raise ValueError(
                f"data.server-test is the server's file in a federation of node data, but data.name is "
                f"{self.name!r}, whose own held-out split the server tests on; set data.name='{NODE_DATA}' "
                "or leave data.server-test empty"
            )
        return self


class ClientsConfig(Section):
    per_round: int = Field(0, ge=0, description="Clients sampled per round (0 = all connected).")
    min: int = Field(2, ge=1, description="Wait for this many nodes; a round needs this many replies.")
    num_partitions: int = Field(
        0, ge=0, description="Partitions of the data (0 = the node config's num-partitions)."
    )

    @model_validator(mode="after")
    def _rounds_can_aggregate(self) -> ClientsConfig:
        if 0 < self.per_round < self.min:
            raise ValueError(
                f"clients.per-round={self.per_round} is below clients.min={self.min}: no round could "
                "ever aggregate; sample at least clients.min clients (or 0 = all)"
            )
        return self


class TrainConfig(Section):
    local_steps: int = Field(20, ge=0, description="Optimizer steps per round (0 = local-epochs).")
    local_epochs: int = Field(1, ge=1, description="Local epochs when local-steps is 0.")
    batch_size: int = Field(32, ge=1, le=4096, description="Training batch size.")
    lr: float = Field(
        0.0, ge=0, lt=1, description="Peak learning rate (0 = the tuning mode's: train.full-lr, ...)."
    )
    full_lr: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate of full tuning when lr is 0.")
    lora_lr: float = Field(1e-3, gt=0, lt=1, description="Peak learning rate of LoRA when lr is 0.")
    bitfit_lr: float = Field(1e-3, gt=0, lt=1, description="Peak learning rate of BitFit when lr is 0.")
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW weight decay.")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Share of all steps spent warming up.")
    clip_norm: float = Field(1.0, ge=0, description="Gradient clipping (0 = off).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Training compute precision; 'auto' = bf16 on GPUs that support it, else fp32."
    )
    target_speed: float = project_option(
        0.0,
        "Devices slower than this relative speed run fewer local steps, floor(local-steps x "
        "speed / target-speed) and at least 1, so no device's training takes longer than a target-speed "
        "device's full round: the full-depth counterpart of drop.target-speed (0 = off).",
        ge=0,
        le=1e3,
    )

    @model_validator(mode="after")
    def _matched_steps_need_steps(self) -> TrainConfig:
        if self.target_speed > 0 and self.local_steps == 0:
            raise ValueError(
                "train.target-speed scales train.local-steps, which is 0 (local epochs); set a step count"
            )
        return self

    def mode_lr(self, mode: TuningMode) -> float:
        """The peak learning rate of a tuning mode: ``lr`` when set, else the mode's own."""
        return self.lr or {"full": self.full_lr, "lora": self.lora_lr, "bitfit": self.bitfit_lr}[mode]


class RoundConfig(Section):
    timeout: float = Field(
        900.0,
        ge=MIN_ROUND_TIMEOUT_S,
        description=f"Seconds to wait for replies in one round (at least {MIN_ROUND_TIMEOUT_S:g}: a "
        "ClientApp needs a few seconds before its first step).",
    )
    wire_dtype: Literal["float32", "float16"] = Field(
        "float32", description="Precision of the tensors sent to and from clients (float16 halves traffic)."
    )
    aggregator: Aggregator = project_option(
        "mean", "Per parameter: weighted 'mean' (FedAvg), or the robust 'median' / 'trimmed-mean'."
    )
    weight_cap: float = project_option(
        2.0,
        "No client's aggregation weight above this x the round's median weight (0 = off).",
        ge=0,
    )
    clip_factor: float = project_option(
        2.0,
        "Clip each client's update of a layer group to this x the round's median norm (0 = off).",
        ge=0,
    )


class ServerConfig(Section):
    """The server's step from a round's aggregated deltas to the next global model (any method)."""

    optimizer: Literal["mean", "fedadam"] = project_option(
        "mean",
        "'mean': add the aggregated deltas (FedAvg's step); 'fedadam': Adam on them as a pseudo-gradient "
        "(Reddi et al. 2021), with moments and bias correction per parameter over only the rounds that "
        "updated it (this project's reading of FedAdam for layer-wise rounds). Fixed for a resumed run.",
    )
    lr: float = project_option(1e-2, "FedAdam's server learning rate.", gt=0, le=10)
    beta_1: float = project_option(0.9, "FedAdam's first-moment decay.", ge=0, lt=1)
    beta_2: float = project_option(0.99, "FedAdam's second-moment decay.", ge=0, lt=1)
    tau: float = project_option(1e-3, "FedAdam's adaptivity: added to the root of the second moment.", gt=0)


class EvalConfig(Section):
    max_examples: int = Field(500, ge=0, description="Server test examples evaluated (0 = all).")
    client_examples: int = Field(
        200, ge=0, description="Own test examples a client evaluates with personal layers (0 = all)."
    )
    local: bool = Field(
        False,
        description="Every client evaluates the model it receives on its own test split (always "
        "on with personal layers).",
    )
    batch_size: int = Field(64, ge=1, description="Evaluation batch size.")


class LayerDropConfig(Section):
    """Stochastic transformer layer dropout (STLD), a mechanism any method can switch on; DropPEFT's
    bandit over dropout configurations is set under ``droppeft.*``."""

    mode: Literal["auto", "off", "fixed", "bandit"] = Field(
        "auto", description="'auto': bandit for droppeft, off otherwise."
    )
    mean_rate: float = Field(0.5, ge=0, lt=1, description="Mean drop rate for mode=fixed.")
    warmup: float = project_option(
        0.0, "Share of the federation's steps over which drop rates ramp up from 0.", ge=0, le=1
    )
    shape: DropShape = Field(
        "incremental", description="How drop.mean-rate is spread over the blocks (mode=fixed)."
    )
    target_speed: float = project_option(
        0.0,
        "Where layer dropout is on (droppeft, or drop.mode=fixed for a method that trains every "
        "block; LEFF fits slow devices by their window instead), devices slower than this "
        "relative speed drop blocks at a mean rate of at least 1 - speed / target-speed, so no device's "
        "blocks take longer than a target-speed device's at full depth (0 = off).",
        ge=0,
        le=1e3,
    )


class PtlsConfig(Section):
    """Personal layers (DropPEFT's PTLS), which any method can keep."""

    fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of trained blocks kept personal (0 = none, the default for every method; "
        "ptls.fraction=0.25 with droppeft.rates='0.15,0.3' runs the paper's DropPEFT).",
    )


#: ``proxy.name`` value for the texts of the server's validation split, used without their labels
SERVER_VALIDATION = "server:validation"


class ProxyConfig(Section):
    """Unlabelled text the server runs the model on: LEFF's block importance and distillation, and the
    block sensitivity behind the 'sensitivity' drop shape."""

    name: str = Field(
        "embedded:proxy-text",
        description="Unlabelled text: embedded asset, local file, or 'server:validation' (the server's "
        "validation texts without labels).",
    )
    examples: int = Field(128, ge=1, description="Proxy examples for importance and distillation.")


class DevicesConfig(Section):
    profiles: str = Field(
        "workstation,cpu-box,jetson-orin",
        description="Device profiles cycled over partitions for nodes whose node config names no device "
        "(simulation): heterogeneous by default; empty = every such node is a workstation.",
    )

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, profiles: str) -> str:
        profile_names(profiles)
        return profiles


class OutputConfig(Section):
    dir: str = Field("outputs", description="Parent directory of run directories.")
    save_model: bool = Field(
        True, description="Save the final model (LoRA: the adapter) with save_pretrained."
    )
    tensorboard: bool = Field(
        False, description="Also write TensorBoard event files (needs the 'tensorboard' extra)."
    )
    save_every: int = project_option(
        0,
        "Also save the global model after every N-th round, as the final model is saved, in "
        "model-round-NNNN/ of the run directory (0 = off).",
        ge=0,
        le=100000,
    )
    keep_last: int = project_option(
        0, "Keep only the newest this many of those round models (0 = keep all).", ge=0, le=100000
    )

    @model_validator(mode="after")
    def _keep_last_needs_round_models(self) -> OutputConfig:
        if self.keep_last and not self.save_every:
            raise ValueError(
                f"output.keep-last={self.keep_last} keeps the newest round models, but output.save-every "
                "is 0 (no round models are saved): also set output.save-every, e.g. output.save-every=5"
            )
        return self


class LimitsConfig(Section):
    """What one client may send, checked before the server works on it (this project's bounds)."""

    reply_mb: float = project_option(
        4096.0,
        "Largest train reply's tensors in MB (its tensor names and shapes are also bounded by its plan).",
        gt=0,
        le=1e6,
    )
    text_chars: int = project_option(
        1000, "Longest client text kept in logs and reports (reasons).", ge=64, le=1_000_000
    )
    list_items: int = project_option(
        10_000, "Most entries in any list or record a client sends.", ge=1, le=10_000_000
    )


class RunConfig(Section):
    preset: str = Field(
        "",
        description="A named bundle of settings (fedcore/presets/<name>.toml): it sets what it lists, and "
        "every key given explicitly (--run-config) wins over it.",
    )
    method: str = Field("fedlora", description="One of fedcore/methods/specs.py's METHODS.")
    seed: int = Field(
        0, ge=0, description="Derives every random choice: splits, partitions, plans, masks, init."
    )
    rounds: int = Field(5, ge=1, le=100000, description="Federated rounds.")
    resume_from: str = Field("", description="A run directory whose last checkpoint this run continues.")
    model: ModelConfig = ModelConfig()
    tuning: TuningConfig = TuningConfig()
    data: DataConfig = DataConfig()
    clients: ClientsConfig = ClientsConfig()
    train: TrainConfig = TrainConfig()
    round: RoundConfig = RoundConfig()
    server: ServerConfig = ServerConfig()
    eval: EvalConfig = EvalConfig()
    drop: LayerDropConfig = LayerDropConfig()
    ptls: PtlsConfig = PtlsConfig()
    proxy: ProxyConfig = ProxyConfig()
    droppeft: DropPeftConfig = DropPeftConfig()
    leff: LeffConfig = LeffConfig()
    devices: DevicesConfig = DevicesConfig()
    output: OutputConfig = OutputConfig()
    limits: LimitsConfig = LimitsConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"must be one of {', '.join(repr(m) for m in METHODS)}")
        return method

    @model_validator(mode="after")
    def _validation_proxy_has_texts(self) -> RunConfig:
        if self.proxy.name == SERVER_VALIDATION and self.data.validation_fraction == 0:
            raise ValueError(
                "proxy.name='server:validation' takes the server's validation texts, but "
                "data.validation-fraction is 0 (no validation split; e.g. data.validation-fraction=0.05)"
            )
        return self

    @model_validator(mode="after")
    def _node_data_names_its_labels(self) -> RunConfig:
        if self.data.name == NODE_DATA and self.model.task == "seq-cls" and not self.data.labels.strip(","):
            raise ValueError(
                "data.name='node' trains every node on its own file, so the run must fix the label set they "
                "share: set data.labels to the class names in label-id order, e.g. data.labels='rotten,fresh'"
            )
        return self

    @model_validator(mode="after")
    def _one_speed_match(self) -> RunConfig:
        if self.train.target_speed > 0 and self.drop.target_speed > 0:
            raise ValueError(
                "train.target-speed and drop.target-speed both shorten slow devices' rounds (fewer steps, "
                "shallower steps); set at most one of them"
            )
        return self

    @model_validator(mode="after")
    def _tuning_fits_method(self) -> RunConfig:
        allowed = self.method_spec.allowed_tuning
        if self.tuning.mode not in ("auto", *allowed):
            raise ValueError(
                f"tuning.mode={self.tuning.mode} contradicts method={self.method}, which trains with "
                f"{' or '.join(repr(m) for m in allowed)} (use 'auto')"
            )
        return self

    @property
    def method_spec(self) -> MethodSpec:
        return method_spec(self.method)

    # The settings actually used: an explicit value, or for 'auto' the method's own (its MethodSpec).

    @property
    def tuning_mode(self) -> TuningMode:
        return _explicit_or(self.tuning.mode, self.method_spec.tuning)

    @property
    def drop_mode(self) -> str:
        return _explicit_or(self.drop.mode, self.method_spec.drop_mode)

    @property
    def learning_rate(self) -> float:
        return self.train.mode_lr(self.tuning_mode)

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
        """Validate a flat dotted-key dict of explicit settings: the preset it names fills the keys it
        leaves out, the defaults the rest; raise ConfigError naming the bad key and what to type."""
        flat = {**_preset(flat.get("preset", "")), **flat}
        tree: dict[str, Any] = {}
        for key, value in flat.items():
            node = tree
            *parents, leaf = key.split(".")
            for part in parents:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"{key}: '{part}' is a value, not a section")
                node = child
            node[leaf] = value
        try:
            return cls.model_validate(tree)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def from_flower(cls, run_config: dict[str, Any], overrides: Collection[str]) -> RunConfig:
        """The server's run config from Flower's: ``run_config`` is pyproject's defaults merged with the
        run's overrides, whose keys are ``overrides`` (the run's ``override_config``). The preset sets
        every key it lists except the overridden ones, so an override wins even when it repeats a
        default. The output directory is checked here, on the machine that writes to it."""
        preset = _preset(run_config.get("preset", ""))
        cfg = cls.from_flat({**run_config, **{k: v for k, v in preset.items() if k not in overrides}})
        check_output_dir(cfg.output.dir)
        return cfg

    def to_flat(self) -> dict[str, Any]:
        """The inverse of from_flat: dotted kebab-case keys with scalar values."""
        return _flatten(self.model_dump(by_alias=True))


def check_output_dir(directory: str) -> None:
    """Refuse an ``output.dir`` that cannot be created or written to, before any round."""
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"output.dir: cannot create or write to '{directory}' ({reason}); set it to a writable "
            f"directory, e.g. output.dir='outputs'"
        ) from None


def _preset(name: Any) -> dict[str, Any]:
    try:
        return preset_values(name)
    except PresetError as error:
        raise ConfigError(f"preset: {error}") from None


def _explicit_or(value: Any, method_default: Any) -> Any:
    return method_default if value == "auto" else value


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _describe(exc: ValidationError) -> str:
    """One line per problem: 'key: what is wrong, what to type (got value)'."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "config"
        got = error.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{key}: {_message(key, error, got)}{shown}")
    return "invalid run config: " + "; ".join(lines)


def _message(key: str, error: Any, got: Any) -> str:
    """The error in the user's terms: what to type, never the validation library's wording."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return MOVED_KEYS.get(key, "unknown key")
    if kind == "literal_error":
        expected = error["ctx"]["expected"]
        return f"must be one of {expected}, quoted (e.g. {key}={expected.split(',')[0].split(' or ')[0]})"
    if kind == "string_type":
        return f"must be text: quote it, e.g. {key}='{got}'"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"must be a whole number, unquoted (e.g. {key}={_as_number(got, int) or 5})"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, unquoted (e.g. {key}={_as_number(got, float) or 0.5})"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, unquoted (e.g. {key}=true)"
    if kind == "finite_number":
        return "must be a finite number"
    return error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")


def _as_number(value: Any, kind: type) -> int | float | None:
    """``value`` as the number it spells (a quoted '0.3', a whole 5.0), for the message's example."""
    try:
        number = kind(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == float(value) else None
