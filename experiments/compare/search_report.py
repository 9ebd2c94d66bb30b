"""The report of a hyperparameter search (experiments/compare/search.py): DIR/report/search.md.

    python -m experiments.compare DIR      # a search workdir (it holds search.json)

For every study (one per point with --sweep): its trials by state, the best trial (validation
value, step, folder), Optuna's optimisation history and parameter importances (PED-ANOVA, Watanabe
et al., 2023; `optuna.visualization.matplotlib`, as PNG), and a table of the best configuration
per point with its number of trials. Each study's trials also get the ordinary run report
(`experiments.compare.report`: table and learning curves) in <point>/trials/report/. With --sweep
the
tuned comparison (best trial per point, several seeds, test numbers) is DIR/tuned/report/.
"""

import json
import os
import warnings
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from absl import logging  # noqa: E402

from experiments.compare import report  # noqa: E402

MANIFEST = "search.json"  # written by experiments/compare/search.py
STORE = "study.db"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def storage_url(directory: str, manifest: dict[str, Any]) -> str:
  """The manifest's storage (passwords come from ~/.pgpass or PGPASSWORD), else DIR/study.db."""
  return manifest.get("storage") or f"sqlite:///{os.path.join(os.path.abspath(directory), STORE)}"


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value).replace("|", "\\|")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _file_name(study: str) -> str:
  return "".join(c if c.isalnum() or c in "._=-" else "_" for c in study)[:150]


def _plot(kind: str, study: optuna.Study, path: str, metric: str) -> str | None:
  """Optuna's matplotlib figure as a PNG; None (and why, in the log) where it cannot be drawn."""
  plot = {
    "history": optuna.visualization.matplotlib.plot_optimization_history,
    "importance": optuna.visualization.matplotlib.plot_param_importances,
  }[kind]
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      ax = plot(study)
    fig = ax.figure
    for loc in ("left", "center"):  # Optuna places each plot's title differently
      if ax.get_title(loc):
        ax.set_title(f"{ax.get_title(loc)}: {study.study_name}", loc=loc, fontsize=10)
    if kind == "history":
      ax.set_ylabel(f"{metric} (validation)")
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
  except Exception as e:  # noqa: BLE001 - a plot that cannot be drawn must not sink the report
    logging.warning("no %s plot for %s: %s", kind, study.study_name, e)
    plt.close("all")
    return None


def _counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
  out = dict.fromkeys(STATES, 0)
  for t in trials:
    out[t.state.name] = out.get(t.state.name, 0) + 1
  return out


def write_report(directory: str) -> str:
  """Writes DIR/report/search.md and its PNGs; returns the path of search.md."""
  with open(os.path.join(directory, MANIFEST)) as f:
    manifest = json.load(f)
  url = storage_url(directory, manifest)
  out = os.path.join(directory, "report")
  os.makedirs(out, exist_ok=True)
  keys = [p["key"] for p in manifest["params"]]
  summary, best_rows, sections = [], [], []
  for entry in manifest["studies"]:
    name, metric = entry["name"], entry["metric"]
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    summary.append([
      name, counts["COMPLETE"] + counts["PRUNED"], counts["COMPLETE"], counts["PRUNED"],
      counts["FAIL"], counts["RUNNING"] + counts["WAITING"], best.value if best else None,
      best.number if best else None, best.user_attrs.get("best_step") if best else None,
    ])  # fmt: skip
    if best:
      best_rows.append([name, counts["COMPLETE"] + counts["PRUNED"],
                        *(best.params.get(k) for k in keys), best.value])  # fmt: skip
    stem = _file_name(name)
    history = _plot("history", study, os.path.join(out, f"search_history_{stem}.png"), metric)
    importance = (
      _plot("importance", study, os.path.join(out, f"search_importance_{stem}.png"), metric)
      if len(complete) >= 2
      else None
    )
    text = [f"### {name}\n"]
    text.append(f"![history]({os.path.basename(history)})\n" if history else "no history plot\n")
    text.append(
      f"![importance]({os.path.basename(importance)})\n"
      if importance
      else "no importance plot (it needs at least 2 complete trials)\n"
    )
    rows = [
      [t.number, t.state.name, t.value, *(t.params.get(k) for k in keys),
       os.path.relpath(t.user_attrs["dir"], directory) if "dir" in t.user_attrs else ""]
      for t in trials
    ]  # fmt: skip
    text.append(_table(["trial", "state", f"{metric} (best)", *keys, "folder"], rows) + "\n")
    trials_dir = os.path.join(directory, entry["dir"], "trials")
    if os.path.isdir(trials_dir):
      report.write_report(trials_dir, max_maps=0)
      link = os.path.relpath(os.path.join(trials_dir, "report", "report.md"), out)
      text.append(f"Every trial's run (table, learning curves): [{link}]({link})\n")
    sections += text
  direction = manifest["studies"][0]["direction"] if manifest["studies"] else "max"
  metric = manifest["studies"][0]["metric"] if manifest["studies"] else ""
  budget = ", ".join(f"`{k}={v}`" for k, v in manifest["budget"].items()) or "none"
  text = [
    f"# Search: {os.path.basename(os.path.abspath(directory))}\n",
    f"`{manifest['experiment']}`: {len(manifest['studies'])} stud"
    f"{'y' if len(manifest['studies']) == 1 else 'ies'} of {manifest['trials']} finished trials "
    f"each ({manifest['sampler']} sampler, {manifest['pruner']} pruner), the same per-trial "
    f"budget {budget}. Objective: `{metric}` on the validation split, "
    f"{'higher' if direction == 'max' else 'lower'} is better (pruned trials stopped early).\n",
    _table(
      [
        "study",
        "trials",
        "complete",
        "pruned",
        "failed",
        "unfinished",
        f"best {metric}",
        "best trial",
        "best step",
      ],
      summary,
    )  # fmt: skip
    + "\n",
    "## Best configuration per point\n",
    _table(["point", "trials", *keys, f"{metric} (validation)"], best_rows) + "\n",
  ]
  tuned = manifest.get("tuned")
  if tuned and os.path.exists(os.path.join(directory, tuned, "report", "report.md")):
    link = os.path.join("..", tuned, "report", "report.md")
    text.append(
      f"The tuned comparison (each point's best configuration re-run with several seeds, "
      f"evaluated on test): [{link}]({link})\n"
    )
  text += ["## Studies\n", *sections]
  path = os.path.join(out, "search.md")
  with open(path, "w") as f:
    f.write("\n".join(text) + "\n")
  return path
