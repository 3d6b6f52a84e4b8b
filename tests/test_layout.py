"""The package layout: imports between moejax's packages (and its top-level
modules) form no circle, lazy imports inside functions included, so every
package can be read and tested on top of the ones below it."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "moejax"


def _node(module: str):
  """The package ('dispatch') or top-level module ('experts') a dotted
  moejax module belongs to; None outside moejax."""
  parts = module.split(".")
  if parts[0] != "moejax" or len(parts) < 2:
    return None
  return parts[1]


def import_graph():
  """{node: {nodes it imports}} over every .py file under moejax/."""
  graph = {}
  for path in ROOT.rglob("*.py"):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    source = _node(".".join(rel.parts)) if path.name != "__init__.py" or len(rel.parts) > 2 \
        else None
    if source is None:   # moejax/__init__.py: the public names, above everything
      continue
    targets = graph.setdefault(source, set())
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module]
        if node.module == "moejax":
          names = [f"moejax.{alias.name}" for alias in node.names]
      elif isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      else:
        continue
      for name in names:
        target = _node(name)
        if target is not None and target != source:
          targets.add(target)
  return graph


def _cycle(graph):
  """One circle of the graph as a list of nodes, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_circle_between_packages():
  graph = import_graph()
  assert {"train", "studies", "convert", "dispatch", "experts"} <= set(graph)
  cycle = _cycle(graph)
  assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_hf_families_are_specs_and_nothing_else_branches_on_model_type():
  """An HF family lives in its own spec module (named after its model_type);
  the importer, exporter and layout read specs instead of testing names."""
  import re
  from moejax.convert.families import family_specs
  families = ROOT / "convert" / "families"
  for model_type in family_specs():
    assert (families / f"{model_type}.py").is_file(), model_type
  branch = re.compile(r"model_type\s*(==|!=|in\s*\(|not in)|\.startswith\(\"deepseek")
  for path in (ROOT / "convert").rglob("*.py"):
    if families in path.parents:
      continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
      assert not branch.search(line), f"{path.name}:{number} branches on a family: {line}"
