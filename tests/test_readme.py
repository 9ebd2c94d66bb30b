"""Every `main.py` command in the README is valid as written: its flags parse, its experiment file
loads with its overrides and passes the field checks, and a sweep's points all apply; the first
example runs for real with tiny step counts."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from experiments.compare import sweep
from experiments.run import config_file, validate
from tests.helpers import ENV, ROOT, TINY_MODEL_FLAGS, read_json


def readme_commands() -> list[list[str]]:
  """The `main.py` command lines of the README's bash blocks (continuations joined, comments
  dropped), without placeholders (`--config=...`)."""
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  out = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True)
      if "main.py" in words and "--config=..." not in words:
        out.append(words[words.index("main.py") + 1 :])
  return out


COMMANDS = readme_commands()


def _flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
  rest, overrides = config_file.split_argv(words)
  flags = dict(w.lstrip("-").partition("=")[::2] for w in rest)
  return flags, overrides


def test_the_readme_has_commands():
  assert len(COMMANDS) >= 8


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w)[:80] for w in COMMANDS])
def test_readme_command_is_valid(words):
  flags, overrides = _flags(words)
  config = config_file.load(flags["config"], overrides)
  validate.check_fields(config)
  if "sweep" in flags or "seeds" in flags:
    points = sweep.load_sweep(flags["config"], int(flags.get("seeds") or 0))
    for point in points:
      validate.check_fields(sweep.apply_overrides(config, point))


@pytest.mark.slow
def test_readme_first_override_example_runs(tmp_path):
  words = next(w for w in COMMANDS if any(x.startswith("--config.model.attention.name") for x in w))
  words = [w for w in words if not w.startswith("--workdir")]
  tiny = [*TINY_MODEL_FLAGS, "--config.train.num_steps=4", "--config.train.eval_every_steps=4"]
  tiny += ["--config.train.log_every_steps=2", "--config.train.checkpoint_every_steps=4"]
  proc = subprocess.run(
    [sys.executable, "main.py", *words, *tiny, f"--workdir={tmp_path}"],
    cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert read_json(tmp_path / "results.json")["status"] == "finished"
