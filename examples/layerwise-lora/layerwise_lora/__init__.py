"""A Flower app whose clients fine-tune LoRA adapters layer by layer, aggregated by LayerwiseStrategy."""
