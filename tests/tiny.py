"""A tiny version of the default experiment, shared by the loop tests."""

import ml_collections

from configs import default


def tiny_config(steps: int = 24, **model) -> ml_collections.ConfigDict:
  config = default.get_config(f"steps={steps}")
  config.data.update(vocab_size=16, min_length=2, max_length=8, batch_size=16, eval_examples=40)
  config.model.update(
    emb_dim=32, qkv_dim=32, mlp_dim=64, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
    max_len=16, **model,
  )  # fmt: skip
  config.optimizer.warmup_steps = 4
  config.train.update(
    eval_every_steps=steps // 2, log_every_steps=4, checkpoint_every_steps=steps // 2
  )
  return config
