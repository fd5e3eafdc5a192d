"""LEFF's own settings (the ``leff.*`` keys): window choice, what stands in for the blocks outside a
client's window, and the distilled students' recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedcore.section import Section, project_option


class LeffConfig(Section):
    """LEFF: importance-sampled windows of blocks, the rest held by stand-ins."""

    window: Literal["importance", "random", "round-robin", "least-trained"] = Field(
        "importance",
        description="'importance' (the paper's), 'random' and 'round-robin' (its ablations), or "
        "'least-trained' (this project's: the window whose blocks were trained least often so far).",
    )
    stand_in: Literal["bfloat16", "students"] = project_option(
        "bfloat16",
        "What stands in for the blocks outside a client's window: the blocks themselves held in "
        "bfloat16 (this project's option and the default: no distillation; about 35 points above the "
        "students on paper-cls), or the paper's distilled students (leff.stand-in='students' runs the "
        "paper's LEFF).",
    )
    temperature: float = project_option(
        0.1,
        "Softmax temperature over window scores divided by the largest (this project's choice: 0.1, "
        "chosen on validation; at 1 the draw is nearly uniform).",
        gt=0,
    )
    importance_every: int = Field(1, ge=1, description="Recompute block importance every R rounds.")
    compression: float = Field(0.5, gt=0, le=1, description="Student depth = ceil(unselected blocks * r).")
    distill_alpha: float = Field(0.0, ge=0, le=1, description="Weight of the attention-map KL term.")
    distill_steps: int = Field(20, ge=0, description="Distillation steps per compressed segment.")
    distill_lr: float = Field(1e-4, gt=0, lt=1)
    warm_students: int = project_option(
        8, "Students kept across rounds to warm-start their segment (0: never).", ge=0
    )
    warm_distill_steps: int = project_option(5, "Distillation steps of a warm-started student.", ge=0)
    student_init: Literal["sensitive", "uniform"] = project_option(
        "sensitive",
        "Which teacher blocks a student starts from: the segment's last block and the most "
        "removal-sensitive others, or uniformly spaced ones.",
    )
    keep_protected: bool = project_option(
        False,
        "Students keep every protected block of their segment (removal sensitivity above "
        "twice the median) on top of ceil(other blocks * r); needs student-init 'sensitive'.",
    )

    @model_validator(mode="after")
    def _protected_needs_sensitivity(self) -> LeffConfig:
        if self.keep_protected and self.student_init != "sensitive":
            raise ValueError(
                "leff.keep-protected needs leff.student-init = 'sensitive' (the protected blocks are found "
                f"by the sensitivity measure; got student-init '{self.student_init}')"
            )
        return self
