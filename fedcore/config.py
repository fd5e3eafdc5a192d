"""Run configuration: one validated tree parsed from Flower's flat run config.

Flower hands the app a flat dict of dotted keys (``model.name``, ``train.lr``...). Every key is declared
here with its default, type and allowed values, so a bad value stops the run before any training with
one message naming the key. Values are strict (``rounds=true`` or ``rounds="5"`` is refused, not
converted), numbers finite, and settings that contradict each other are refused together.
``pyproject.toml``'s ``[tool.flwr.app.config]`` mirrors these defaults (a
test keeps the two in sync): Flower only accepts ``--run-config`` overrides for keys listed there.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedcore.core.aggregators import Aggregator
from fedcore.core.devices import profile_names
from fedcore.methods.specs import METHODS, MethodSpec, TuningMode, method_spec
from fedcore.presets import PRESETS, apply_preset

#: Learning rates that work for each tuning mode when ``train.lr`` is 0 (our defaults, not the papers').
DEFAULT_LR: dict[str, float] = {"full": 5e-5, "lora": 1e-3, "bitfit": 1e-3}


class ConfigError(ValueError):
    """A run configuration value is invalid; the message names the key and what is allowed."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class Section(BaseModel):
    """Base of every config section: kebab-case keys, unknown keys refused, strict types, finite numbers."""

    model_config = ConfigDict(
        alias_generator=_kebab,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
    )


class ModelConfig(Section):
    name: str = Field(
        "embedded:all-MiniLM-L6-v2",
        description="'embedded:<asset>', a local model directory, or a hub id (needs network).",
    )
    task: Literal["seq-cls", "causal-lm"] = "seq-cls"
    max_length: int = Field(64, ge=8, le=8192, description="Tokens per example (truncation).")


class TuningConfig(Section):
    mode: Literal["auto", "full", "lora", "bitfit"] = Field(
        "auto", description="'auto' takes the method's own tuning (fedavg: full, fedlora: lora...)."
    )
    lora_r: int = Field(16, ge=1, le=1024)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: str = Field(
        "", description="Comma-separated module names; empty = the architecture's default (model.py)."
    )
    bitfit_set: Literal["biases-and-head", "biases"] = Field(
        "biases-and-head",
        description="bitfit: biases + the task head's weights, or every bias only (the LEFF paper's set).",
    )


#: ``data.name`` value for a federation in which every node trains on its own data (node config data-path)
NODE_DATA = "node"


class DataConfig(Section):
    name: str = Field(
        "embedded:rotten-tomatoes",
        description="'embedded:<asset>', a local .csv/.jsonl/.parquet file or saved dataset folder, a hub "
        "dataset id, or 'node' (every node trains on its own file, named by its node config's data-path).",
    )
    text_column: str = "text"
    label_column: str = "label"
    labels: str = Field(
        "",
        description="The task's class names in label-id order, comma-separated (e.g. 'rotten,fresh'); rows "
        "with another label are refused. Empty = the shared dataset's own; required with data.name='node'.",
    )
    server_test: str = Field(
        "",
        description="With data.name='node': the server's own held-out file (empty = no server test metrics).",
    )
    partition: Literal["iid", "dirichlet", "natural"] = "dirichlet"
    dirichlet_alpha: float = Field(1.0, gt=0)
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


def target_speed_field(description: str) -> Any:
    """A relative device speed below which a device's round is shortened to a device of that speed's
    (0 = off); ``train.target-speed`` and ``drop.target-speed`` differ only in how they shorten it."""
    return Field(0.0, ge=0, le=1e3, description=description)


class TrainConfig(Section):
    local_steps: int = Field(20, ge=0, description="Optimizer steps per round (0 = local-epochs).")
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(0.0, ge=0, lt=1, description="Peak learning rate (0 = the tuning mode's default).")
    weight_decay: float = Field(0.01, ge=0, lt=1)
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Share of all steps spent warming up.")
    clip_norm: float = Field(1.0, ge=0, description="Gradient clipping (0 = off).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Training compute precision; 'auto' = bf16 on GPUs that support it, else fp32."
    )
    target_speed: float = target_speed_field(
        "Devices slower than this relative speed run fewer local steps, floor(local-steps x "
        "speed / target-speed) and at least 1, so no device's training takes longer than a target-speed "
        "device's full round: the full-depth counterpart of drop.target-speed (this project's option; "
        "0 = off).",
    )

    @model_validator(mode="after")
    def _matched_steps_need_steps(self) -> TrainConfig:
        if self.target_speed > 0 and self.local_steps == 0:
            raise ValueError(
                "train.target-speed scales train.local-steps, which is 0 (local epochs); set a step count"
            )
        return self


class RoundConfig(Section):
    timeout: float = Field(900.0, gt=0, description="Seconds to wait for replies in one round.")
    wire_dtype: Literal["float32", "float16"] = Field(
        "float32", description="Precision of the tensors sent to and from clients (float16 halves traffic)."
    )
    aggregator: Aggregator = Field(
        "mean", description="Per parameter: weighted 'mean', or the robust 'median' / 'trimmed-mean'."
    )
    weight_cap: float = Field(
        2.0,
        ge=0,
        allow_inf_nan=False,
        description="No client's aggregation weight above this x the round's median weight (0 = off).",
    )
    clip_factor: float = Field(
        2.0,
        ge=0,
        allow_inf_nan=False,
        description="Clip each client's update of a layer group to this x the round's median norm (0 = off).",
    )


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
    batch_size: int = Field(64, ge=1)


class LayerDropConfig(Section):
    """Stochastic transformer layer dropout (DropPEFT's STLD) and its online configurator."""

    mode: Literal["auto", "off", "fixed", "bandit"] = Field(
        "auto", description="'auto': bandit for droppeft, off otherwise."
    )
    mean_rate: float = Field(0.5, ge=0, lt=1, description="Mean drop rate for mode=fixed.")
    warmup: float = Field(
        0.0, ge=0, le=1, description="Share of the federation's steps over which drop rates ramp up from 0."
    )
    lr_compensation: bool = Field(
        False,
        description="Scale each block's learning rate by 1 / (1 - its drop rate), so that a block's "
        "expected change per step matches full depth (this project's option).",
    )
    shape: Literal["uniform", "incremental", "sensitivity"] = Field(
        "incremental", description="How drop.mean-rate is spread over the blocks (mode=fixed)."
    )
    target_speed: float = target_speed_field(
        "Where layer dropout is on (droppeft, or drop.mode=fixed for a method that trains every "
        "block; LEFF fits slow devices by their window instead), devices slower than this "
        "relative speed drop blocks at a mean rate of at least 1 - speed / target-speed, so no device's "
        "blocks take longer than a target-speed device's at full depth (this project's option; 0 = off).",
    )
    rates: str = Field("0.15,0.3", description="Bandit arms: comma-separated mean rates.")
    shapes: str = Field("incremental", description="Bandit arms: comma-separated shapes.")
    exploration: float = Field(
        0.2, ge=0, description="UCB exploration weight (rewards are normalised to [0, 1] per device)."
    )
    discount: float = Field(
        1.0, gt=0, le=1, description="1 = UCB1 with pruning of bad arms; < 1 = discounted UCB, no pruning."
    )
    probe_examples: int = Field(
        64,
        ge=0,
        description="Training-split rows held out of training for the bandit's loss-drop reward "
        "(at most a quarter of them; 0 = off).",
    )

    @model_validator(mode="after")
    def _arms_parse(self) -> LayerDropConfig:
        rates = self.rate_grid()
        if not rates or any(not 0 <= r < 1 for r in rates):
            raise ValueError(f"drop.rates must be comma-separated numbers in [0, 1) (got '{self.rates}')")
        bad = [s for s in self.shape_grid() if s not in ("uniform", "incremental", "sensitivity")]
        if bad or not self.shape_grid():
            raise ValueError(
                f"drop.shapes must be from 'uniform', 'incremental', 'sensitivity' (got '{self.shapes}')"
            )
        return self

    def rate_grid(self) -> list[float]:
        try:
            return [float(r) for r in self.rates.split(",") if r.strip()]
        except ValueError:
            return [-1.0]

    def shape_grid(self) -> list[str]:
        return [s.strip() for s in self.shapes.split(",") if s.strip()]


class PtlsConfig(Section):
    """Personal layers (DropPEFT's PTLS)."""

    fraction: float | Literal["auto"] = Field(
        "auto", description="Share of trained blocks kept personal; 'auto': 0.25 for droppeft, else 0."
    )

    @model_validator(mode="after")
    def _fraction_range(self) -> PtlsConfig:
        if self.fraction != "auto" and not 0 <= self.fraction < 1:
            raise ValueError(f"ptls.fraction must be 'auto' or in [0, 1) (got {self.fraction})")
        return self


#: ``leff.proxy`` value for the texts of the server's validation split, used without their labels
SERVER_VALIDATION = "server:validation"


class LeffConfig(Section):
    """LEFF: importance-sampled windows of blocks, the rest distilled into frozen students."""

    window: Literal["importance", "random", "round-robin", "least-trained"] = "importance"
    stand_in: Literal["students", "bfloat16"] = Field(
        "students",
        description="What stands in for the blocks outside a client's window: the paper's distilled "
        "students, or the blocks themselves held in bfloat16 (no distillation; this project's option).",
    )
    temperature: float = Field(
        0.1,
        gt=0,
        description="Softmax temperature over window scores divided by the largest (this project's choice: "
        "0.1, chosen on validation; at 1 the draw is nearly uniform).",
    )
    importance_every: int = Field(1, ge=1, description="Recompute block importance every R rounds.")
    compression: float = Field(0.5, gt=0, le=1, description="Student depth = ceil(unselected blocks * r).")
    distill_alpha: float = Field(0.0, ge=0, le=1, description="Weight of the attention-map KL term.")
    distill_steps: int = Field(20, ge=0, description="Distillation steps per compressed segment.")
    distill_lr: float = Field(1e-4, gt=0, lt=1)
    warm_students: int = Field(
        8, ge=0, description="Students kept across rounds to warm-start their segment (0: never)."
    )
    warm_distill_steps: int = Field(5, ge=0, description="Distillation steps of a warm-started student.")
    student_init: Literal["sensitive", "uniform"] = Field(
        "sensitive",
        description="Which teacher blocks a student starts from: the segment's last block and the most "
        "removal-sensitive others, or uniformly spaced ones.",
    )
    keep_protected: bool = Field(
        False,
        description="Students keep every protected block of their segment (removal sensitivity above "
        "twice the median) on top of ceil(other blocks * r); needs student-init 'sensitive'.",
    )
    distill_loss: Literal["mse", "normalised"] = Field(
        "mse",
        description="Student output loss: variance-normalised per dimension, or the paper's mse.",
    )
    proxy: str = Field(
        "embedded:proxy-text",
        description="Unlabelled text: embedded asset, local file, or 'server:validation' (the server's "
        "validation texts without labels).",
    )
    proxy_examples: int = Field(128, ge=1, description="Proxy examples for importance and distillation.")

    @model_validator(mode="after")
    def _protected_needs_sensitivity(self) -> LeffConfig:
        if self.keep_protected and self.student_init != "sensitive":
            raise ValueError(
                "leff.keep-protected needs leff.student-init = 'sensitive' (the protected blocks are found "
                f"by the sensitivity measure; got student-init '{self.student_init}')"
            )
        return self


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
    save_model: bool = True
    tensorboard: bool = Field(
        False, description="Also write TensorBoard event files (needs the 'tensorboard' extra)."
    )


class RunConfig(Section):
    preset: str = Field(
        "", description="A named bundle of settings (fedcore/presets.py); values other than a default win."
    )
    method: str = Field("fedlora", description="One of fedcore/methods/specs.py's METHODS.")
    seed: int = Field(0, ge=0)
    rounds: int = Field(5, ge=1, le=100000)
    resume_from: str = Field("", description="A run directory whose last checkpoint this run continues.")
    model: ModelConfig = ModelConfig()
    tuning: TuningConfig = TuningConfig()
    data: DataConfig = DataConfig()
    clients: ClientsConfig = ClientsConfig()
    train: TrainConfig = TrainConfig()
    round: RoundConfig = RoundConfig()
    eval: EvalConfig = EvalConfig()
    drop: LayerDropConfig = LayerDropConfig()
    ptls: PtlsConfig = PtlsConfig()
    leff: LeffConfig = LeffConfig()
    devices: DevicesConfig = DevicesConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"must be one of {', '.join(repr(m) for m in METHODS)}")
        return method

    @model_validator(mode="after")
    def _validation_proxy_has_texts(self) -> RunConfig:
        if self.leff.proxy == SERVER_VALIDATION and self.data.validation_fraction == 0:
            raise ValueError(
                "leff.proxy='server:validation' takes the server's validation texts, but "
                "data.validation-fraction is 0 (no validation split)"
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
    def personal_fraction(self) -> float:
        return _explicit_or(self.ptls.fraction, self.method_spec.personal_fraction)

    @property
    def learning_rate(self) -> float:
        return self.train.lr or DEFAULT_LR[self.tuning_mode]

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
        """Validate a flat dotted-key dict (its preset applied); raise ConfigError naming the bad key."""
        try:
            flat = apply_preset(flat, cls().to_flat())
        except KeyError as unknown:
            raise ConfigError(f"preset: unknown preset {unknown}; known: {sorted(PRESETS)}") from None
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

    def to_flat(self) -> dict[str, Any]:
        """The inverse of from_flat: dotted kebab-case keys with scalar values."""
        return _flatten(self.model_dump(by_alias=True))


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
    """One line per problem: 'key: message (got value)'."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "config"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "literal_error":
            message = f"must be one of {error['ctx']['expected']}"
        got = error.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{key}: {message}{shown}")
    return "invalid run config: " + "; ".join(lines)
