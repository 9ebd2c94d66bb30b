"""Run the curated mutants on a temporary copy of the repository and write the kill table.

See `tests/mutation/__init__.py`. Exit status 1 when a mutant not marked equivalent survives,
a snippet is stale (not found exactly once), or the unmutated tests fail.
"""

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from tests.mutation.mutants import MUTANTS, Mutant, group

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEGIN, END = "<!-- mutation:begin -->", "<!-- mutation:end -->"


def repo_files(root: str) -> list[str]:
  """Tracked and untracked, not ignored, files (the working tree as git sees it)."""
  out = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd=root, check=True, capture_output=True,
  ).stdout  # fmt: skip
  return sorted({p for p in out.decode().split("\0") if p})


def copy_repo(root: str, dest: str) -> None:
  for rel in repo_files(root):
    src = os.path.join(root, rel)
    if os.path.isfile(src) and not os.path.islink(src):
      os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
      shutil.copy2(src, os.path.join(dest, rel))


def run_tests(copy: str, args: Sequence[str], timeout: float) -> tuple[str, float, str]:
  """-> ("passed" | "failed" | "timeout", seconds, last lines of output)."""
  env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist", "-p", "no:cacheprovider"]
  start = time.monotonic()
  try:
    proc = subprocess.run(
      [*cmd, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
    )
  except subprocess.TimeoutExpired:
    return "timeout", time.monotonic() - start, ""
  tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
  # 0: all passed; 1: some failed; 2-5: interrupted / usage / no tests collected.
  status = {0: "passed", 1: "failed"}.get(proc.returncode, f"error (pytest exit {proc.returncode})")
  return status, time.monotonic() - start, tail


def apply(copy: str, m: Mutant) -> str:
  """Write the mutant into the copy; returns the original text (to restore)."""
  path = os.path.join(copy, m.file)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  count = text.count(m.original)
  if count != 1:
    raise LookupError(f"{m.file}: the original snippet occurs {count} times (expected 1)")
  with open(path, "w", encoding="utf-8") as f:
    f.write(text.replace(m.original, m.replacement))
  return text


def restore(copy: str, m: Mutant, text: str) -> None:
  with open(os.path.join(copy, m.file), "w", encoding="utf-8") as f:
    f.write(text)


def outcome(m: Mutant, status: str) -> str:
  if status in ("failed", "timeout"):
    return "killed"
  if status == "passed":
    return "equivalent" if m.equivalent else "survived"
  return status  # stale / error


def table(results: list[dict]) -> str:
  """Markdown: kill rate per module, then the survivors with their reasons."""
  lines = [
    "| module | mutants | killed | equivalent | survived | stale/error | kill rate |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  groups: dict[str, list[dict]] = {}
  for r in results:
    groups.setdefault(r["group"], []).append(r)
  for name, rs in [*groups.items(), ("all", results)]:
    n = {k: sum(r["outcome"] == k for r in rs) for k in ("killed", "equivalent", "survived")}
    other = len(rs) - sum(n.values())
    counted = n["killed"] + n["survived"] + other
    rate = f"{100 * n['killed'] / counted:.0f}%" if counted else "-"
    label = f"**{name}**" if name == "all" else f"`{name}`"
    lines.append(
      f"| {label} | {len(rs)} | {n['killed']} | {n['equivalent']} | {n['survived']} | "
      f"{other} | {rate} |"
    )
  lines += ["", "Kill rate = killed / (mutants − equivalent)."]
  survivors = [r for r in results if r["outcome"] != "killed"]
  if survivors:
    lines += ["", "Not killed:", ""]
    for r in survivors:
      reason = r["equivalent"] or r["detail"] or "no test fails: a gap in the suite"
      lines.append(f"* `{r['id']}` ({r['outcome']}): {r['why']} — {reason}")
  return "\n".join(lines)


def update_docs(path: str, text: str) -> None:
  with open(path, encoding="utf-8") as f:
    doc = f.read()
  if BEGIN not in doc or END not in doc:
    raise SystemExit(f"{path}: no {BEGIN} ... {END} region to replace")
  head, rest = doc.split(BEGIN, 1)
  tail = rest.split(END, 1)[1]
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="comma-separated mutant ids (default: all)")
  parser.add_argument("--out", default=os.path.join(ROOT, "runs", "mutation"))
  parser.add_argument("--docs", default="", help="markdown file whose mutation table to rewrite")
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
  parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
  parser.add_argument(
    "--merge", default="", help="an earlier results.json: its other mutants join the table"
  )
  args = parser.parse_args(argv)
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the copy when stopped
  ids = {m.id for m in MUTANTS}
  wanted = [s for s in args.only.split(",") if s]
  unknown = sorted(set(wanted) - ids)
  if unknown:
    raise SystemExit(f"unknown mutant(s) {unknown}; valid: {', '.join(sorted(ids))}")
  mutants = [m for m in MUTANTS if not wanted or m.id in wanted]

  with tempfile.TemporaryDirectory(prefix="mutation-") as copy:
    copy_repo(ROOT, copy)
    if not args.no_baseline:
      for tests in sorted({m.tests for m in mutants}):
        status, secs, tail = run_tests(copy, tests, args.timeout)
        print(f"baseline {' '.join(tests)}: {status} ({secs:.0f}s)", flush=True)
        if status != "passed":
          print(tail)
          raise SystemExit("the unmutated tests must pass first")
    results = []
    for i, m in enumerate(mutants, 1):
      detail = ""
      try:
        text = apply(copy, m)
      except (LookupError, FileNotFoundError) as e:
        status, secs, detail = "stale", 0.0, str(e)
      else:
        try:
          status, secs, tail = run_tests(copy, m.tests, args.timeout)
        finally:
          restore(copy, m, text)
        if status.startswith("error"):
          detail = tail.replace("\n", " ")[-200:]
      result = {**dataclasses.asdict(m), "group": group(m.file), "status": status}
      result.update(outcome=outcome(m, status), seconds=round(secs, 1), detail=detail)
      results.append(result)
      print(f"[{i}/{len(mutants)}] {m.id}: {result['outcome']} ({secs:.0f}s)", flush=True)

  if args.merge:
    with open(args.merge, encoding="utf-8") as f:
      earlier = {r["id"]: r for r in json.load(f)}
    ran = {r["id"]: r for r in results}  # (earlier results of removed mutants are dropped)
    results = [ran.get(m.id) or earlier[m.id] for m in MUTANTS if m.id in ran or m.id in earlier]
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  text = table(results)
  with open(os.path.join(args.out, "kill_table.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  print(text)
  if args.docs:
    update_docs(args.docs, text)
  return int(any(r["outcome"] not in ("killed", "equivalent") for r in results))


if __name__ == "__main__":
  sys.exit(main())
