"""Flax linen models. `build(model_config, task_info)` picks a family by name (see `registry.py`)."""
