"""Rewrites the report of a sweep's (or a search's) workdir at any time:

    python -m experiments.compare DIR [--baseline=NAME] [--test=t|wilcoxon] [--max_maps=N]

DIR/report/ (experiments/compare/report.py); for a hyperparameter search also DIR/report/search.md
(experiments/compare/search_report.py).
"""

import argparse
import os

from experiments.compare import report, search_report, stats


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=report.__doc__.split("\n")[0])
  parser.add_argument("directory", help="a sweep's --workdir (one folder per run)")
  parser.add_argument("--max_maps", type=int, default=None, help="attention maps of N groups")
  parser.add_argument(
    "--speed", default="tokens_per_sec", choices=["tokens_per_sec", "steps_per_sec"]
  )
  parser.add_argument("--top", type=int, default=5, help="table rows to print")
  parser.add_argument(
    "--baseline", default=None, help="group the others are compared with (default: the first)"
  )
  parser.add_argument("--test", default="t", choices=stats.TESTS, help="paired test over seeds")
  args = parser.parse_args(argv)
  try:
    path = report.write_report(args.directory, args.max_maps, args.speed, args.baseline, args.test)
  except ValueError as e:  # e.g. a --baseline that names no group
    parser.exit(2, f"error: {e}\n")
  report.print_summary(path, args.top)
  if os.path.exists(os.path.join(args.directory, "search.json")):  # a hyperparameter search
    print(f"search report: {search_report.write_report(args.directory)}", flush=True)


if __name__ == "__main__":
  main()
