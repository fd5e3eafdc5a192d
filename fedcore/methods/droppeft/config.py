"""DropPEFT's own settings (the ``droppeft.*`` keys): the arms of its per-device bandit and the bandit's
reward. The layer dropout it configures is a shared mechanism (``drop.*``), as are personal layers
(``ptls.*``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedcore.core.drop_shapes import DROP_SHAPES
from fedcore.section import Section


class DropPeftConfig(Section):
    """The bandit over layer-dropout configurations (one arm per rate x shape)."""

    rates: str = Field(
        "0.15",
        description="Bandit arms: comma-separated mean drop rates. The default, one arm at 0.15, is the "
        "setting chosen on validation; droppeft.rates='0.15,0.3' with ptls.fraction=0.25 runs the "
        "paper's DropPEFT.",
    )
    shapes: str = Field("incremental", description="Bandit arms: comma-separated shapes (see drop.shape).")
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
    def _arms_parse(self) -> DropPeftConfig:
        rates = self.rate_grid()
        if not rates or any(not 0 <= r < 1 for r in rates):
            raise ValueError(
                f"droppeft.rates must be comma-separated numbers in [0, 1), quoted "
                f"(e.g. droppeft.rates='0.15,0.3'; got '{self.rates}')"
            )
        shapes = self.shape_grid()
        if not shapes or any(s not in DROP_SHAPES for s in shapes):
            raise ValueError(
                f"droppeft.shapes must be comma-separated names from {', '.join(DROP_SHAPES)} "
                f"(got '{self.shapes}')"
            )
        return self

    def rate_grid(self) -> list[float]:
        try:
            return [float(r) for r in self.rates.split(",") if r.strip()]
        except ValueError:
            return [-1.0]

    def shape_grid(self) -> list[str]:
        return [s.strip() for s in self.shapes.split(",") if s.strip()]
