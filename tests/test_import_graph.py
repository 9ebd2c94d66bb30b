"""The import graph of the project (stdlib `ast`, no imports executed): dependencies point one
way, main -> experiments -> {models, input_pipeline}, inside experiments compare -> run and
benchmarks -> run, no cycles, and no test imports another test."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("configs", "experiments", "input_pipeline", "models")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
  return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _files() -> dict[str, str]:
  out = {"main": os.path.join(ROOT, "main.py")}
  for package in (*PACKAGES, "tests"):
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          out[_module_name(path)] = path
  return out


FILES = _files()


def imports_of(path: str) -> set[str]:
  """Every module a file imports, at any depth of the file (lazy imports count); `from p import
  m` names p.m when that is a module of the project, else p."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        out.add(full if full in FILES else node.module)
  return out


def graph() -> dict[str, set[str]]:
  """Project module -> the project modules it imports (a package import names its __init__)."""
  return {m: {i for i in imports_of(p) if i in FILES} for m, p in FILES.items()}


def _under(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """A cycle of the graph as a list of modules (first == last), or None."""
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(edges.get(m, ())):
      if state.get(n) == "open":
        return [*stack[stack.index(n) :], n]
      if n not in state and (found := visit(n)):
        return found
    stack.pop()
    state[m] = "done"
    return None

  for m in sorted(edges):
    if m not in state and (found := visit(m)):
      return found
  return None


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    m = todo.pop()
    if m not in seen:
      seen.add(m)
      todo += edges.get(m, ())
  return seen


FORBIDDEN = [  # (importer package, imported package)
  ("models", "input_pipeline"),
  ("models", "experiments"),
  ("models", "configs"),
  ("input_pipeline", "models"),
  ("input_pipeline", "experiments"),
  ("input_pipeline", "configs"),
  ("experiments", "configs"),
  ("experiments.run", "experiments.compare"),
  ("experiments.run", "experiments.benchmarks"),
  ("experiments.compare", "experiments.benchmarks"),
  ("experiments.benchmarks", "experiments.compare"),
  ("configs", "experiments"),
]


def test_no_import_cycles():
  assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_dependencies_point_one_way(importer, imported):
  bad = sorted(
    f"{m} imports {i}"
    for m, deps in graph().items()
    if _under(m, importer)
    for i in deps
    if _under(i, imported)
  )
  assert not bad, bad


def test_the_sweep_runner_does_not_import_plotting():
  edges = graph()
  plotting = sorted(
    m
    for m in reachable(edges, "experiments.compare.sweep")
    if any(_under(i, "matplotlib") for i in imports_of(FILES[m]))
  )
  assert not plotting, plotting


def test_no_test_imports_another_test():
  bad = sorted(
    f"{m} imports {i}"
    for m, deps in graph().items()
    if _under(m, "tests")
    for i in deps
    if i.split(".")[-1].startswith("test_")
  )
  assert not bad, bad


def test_the_checks_catch_what_they_forbid():
  """The checks themselves: a cycle, a forbidden edge and a test importing a test are found."""
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
  assert reachable({"a": {"b"}, "b": {"c"}}, "a") == {"a", "b", "c"}
  assert imports_of(FILES["experiments.compare.search"]) >= {"experiments.compare.report"}
  assert "experiments.run.train" in graph()["main"] or "experiments.run" in graph()["main"]
