"""The curated mutants stay applicable: each snippet occurs exactly once in its file, changes it,
and names test files that exist (`make mutation` runs them; see docs/testing.md)."""

import os

import pytest

from tests.mutation import __main__ as runner
from tests.mutation.mutants import ISSUE_EXAMPLES, MUTANTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.id)
def test_mutant_applies_once_and_names_existing_tests(m):
  with open(os.path.join(ROOT, m.file), encoding="utf-8") as f:
    text = f.read()
  assert text.count(m.original) == 1, f"{m.file}: update mutant {m.id!r}, its snippet moved"
  assert m.replacement != m.original
  files = [a.split("::")[0] for a in m.tests if a.startswith("tests/")]
  assert files and all(os.path.isfile(os.path.join(ROOT, f)) for f in files)


def test_ids_are_unique_and_cover_the_issue_examples():
  ids = [m.id for m in MUTANTS]
  assert len(ids) == len(set(ids))
  assert set(ISSUE_EXAMPLES) <= set(ids)


def test_apply_and_restore_touch_only_the_copy(tmp_path):
  m = MUTANTS[0]
  target = tmp_path / m.file
  target.parent.mkdir(parents=True)
  original = f"head\n{m.original}\ntail\n"
  target.write_text(original, encoding="utf-8")
  text = runner.apply(str(tmp_path), m)
  assert target.read_text(encoding="utf-8") == f"head\n{m.replacement}\ntail\n"
  runner.restore(str(tmp_path), m, text)
  assert target.read_text(encoding="utf-8") == original
  target.write_text("no snippet here", encoding="utf-8")
  with pytest.raises(LookupError, match="occurs 0 times"):
    runner.apply(str(tmp_path), m)


def test_kill_table_rates_exclude_equivalent_mutants():
  rows = [
    {"group": "g", "outcome": o, "id": f"m{i}", "why": "w", "equivalent": e, "detail": ""}
    for i, (o, e) in enumerate(
      [("killed", ""), ("killed", ""), ("equivalent", "same"), ("survived", "")]
    )
  ]
  text = runner.table(rows)
  assert "| `g` | 4 | 2 | 1 | 1 | 0 | 67% |" in text
  assert "`m2` (equivalent): w — same" in text and "`m3` (survived)" in text
