"""A jax.profiler trace of chosen train steps (`train.profile_steps=(first, count)`)."""

import os

import jax
from absl import logging


class Profile:
  """Traces steps (first, first + count] into workdir/profile: the XPlane files TensorBoard's
  profile plugin and XProf open, and perfetto_trace.json.gz (ui.perfetto.dev); nothing when
  count is 0."""

  def __init__(self, workdir: str, first: int, count: int):
    self.directory = os.path.join(workdir, "profile")
    self.first, self.last = int(first), int(first) + int(count)
    self.active = False

  def before(self, step: int) -> None:
    if self.last > self.first and step == self.first:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profile of steps %d-%d in %s", self.first + 1, self.last, self.directory)

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    if self.active:
      jax.profiler.stop_trace()
