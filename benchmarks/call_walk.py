"""Walks the evaluation's call path from its entry function and counts what a reader meets.

    python benchmarks/call_walk.py [--root DIR] [--depth N] [--show]

Reads the sources (no import, so it also reads an older checkout: --root) and walks, depth
first and in source order, the calls of `jaxpure.jobs.evaluation.evaluate` (what evaluate.py
runs) into functions and classes of the evaluation package `jaxpure.jobs.evaluation` (calls
into the rest of jaxpure are the library the evaluation uses, not its path). A call is
resolved statically: a name defined in the module or imported, `module.name`, and
`e.name` where `e` runs over a module-level tuple of modules (the evaluators). Nested
functions are read where they stand, as part of the function around them. Each function is
walked the first time it is called and down to --depth calls from the entry (default 2: the
entry's callees and theirs).

Prints:
- stops: the functions and classes walked (the entry included);
- modules: the modules they are in;
- returns to a module higher up: how often the walk comes back to a module it came down from
  (a visit that begins in the module of a function on the call stack above);
- max visits per module: the most visits of one module, a visit being a run of consecutive
  stops in it.
"""

import argparse
import ast
import os
import sys

ENTRY = ("jaxpure.jobs.evaluation", "evaluate")
PACKAGE = "jaxpure.jobs.evaluation"
#: The entry's parameters that hold the config: the config itself.
CARRIERS = frozenset({"config"})


def _module_name(root: str, path: str) -> str:
  rel = os.path.relpath(path, root)[:-len(".py")].split(os.sep)
  return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def read_modules(root: str) -> dict:
  """{module name: parsed module} of every .py file under root/jaxpure."""
  modules = {}
  for folder, _, files in os.walk(os.path.join(root, "jaxpure")):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        with open(path) as f:
          modules[_module_name(root, path)] = ast.parse(f.read(), path)
  return modules


def _imports(nodes, module: str, modules: dict) -> dict:
  """{alias: ("module", name) or ("symbol", (module, name))} of the imports among nodes."""
  out = {}
  for node in nodes:
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.asname:
          out[a.asname] = ("module", a.name)
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      for a in node.names:
        full = f"{base}.{a.name}"
        out[a.asname or a.name] = (("module", full) if full in modules
                                   else ("symbol", (base, a.name)))
  return out


class Walker:
  """The walk (`walk`) over the parsed modules."""

  def __init__(self, modules: dict, depth: int, follow_config: bool = False):
    self.modules, self.depth, self.follow_config = modules, depth, follow_config
    self.scope = "jaxpure" if follow_config else PACKAGE
    self.defs = {m: {n.name: n for n in tree.body
                     if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
                 for m, tree in modules.items()}
    self.aliases = {m: _imports(tree.body, m, modules) for m, tree in modules.items()}
    self.stops: list[tuple[str, str]] = []
    self.positions: list[tuple[str, bool]] = []  # (module, arrived by a return)

  def _resolve_symbol(self, module: str, name: str, hops: int = 3):
    """(module, name) where `name` seen from `module` is defined, or None."""
    if name in self.defs.get(module, {}):
      return module, name
    kind, target = self.aliases.get(module, {}).get(name, (None, None))
    if kind == "symbol" and hops:
      return self._resolve_symbol(target[0], target[1], hops - 1)
    return None

  def _module_tuple(self, module: str, name: str) -> list[str]:
    """The modules of a module-level `name = (m1, m2, ...)` of module aliases, or []."""
    for node in self.modules[module].body:
      if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                               for t in node.targets)
              and isinstance(node.value, ast.Tuple)):
        aliases = self.aliases[module]
        mods = [aliases.get(e.id, (None, None)) for e in node.value.elts
                if isinstance(e, ast.Name)]
        return [target for kind, target in mods if kind == "module"]
    return []

  def _callees(self, module: str, func: ast.AST) -> list[tuple[tuple[str, str], ast.Call]]:
    """The calls of func's body (nested functions included), in source order, resolved:
    [((module, name), the call)]."""
    local = _imports(ast.walk(func), module, self.modules)
    loops = {}  # loop variable -> modules it runs over
    for node in ast.walk(func):
      gens = (node.generators if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp,
                                                   ast.GeneratorExp)) else
              [node] if isinstance(node, ast.For) else [])
      for g in gens:
        if isinstance(g.target, ast.Name) and isinstance(g.iter, ast.Name):
          loops[g.target.id] = self._module_tuple(module, g.iter.id)
    calls = sorted((n for n in ast.walk(func) if isinstance(n, ast.Call)),
                   key=lambda n: (n.lineno, n.col_offset))
    out = []
    for call in calls:
      f = call.func
      if isinstance(f, ast.Name):
        found = self._resolve_symbol(module, f.id)
        kind, target = local.get(f.id, (None, None))
        if found is None and kind == "symbol":
          found = self._resolve_symbol(target[0], target[1])
        out += [(found, call)] if found else []
      elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        name = f.value.id
        kind, target = local.get(name) or self.aliases[module].get(name, (None, None))
        if kind == "module":
          found = self._resolve_symbol(target, f.attr)
          out += [(found, call)] if found else []
        elif name in loops:
          out += [(r, call) for m in loops[name] for r in [self._resolve_symbol(m, f.attr)]
                  if r]
    return out

  def _holders(self, func: ast.AST, calls, carriers) -> frozenset:
    """Local names of func assigned an object that holds the config: the result of a call
    passing a carrier to a class with a config field, or to a function annotated to return
    one."""
    resolved = {id(call): callee for callee, call in calls}
    names = set()
    for node in ast.walk(func):
      if not (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)
              and id(node.value) in resolved and _passes(node.value, carriers | names)):
        continue
      module, name = resolved[id(node.value)]
      target = self.defs[module][name]
      if isinstance(target, ast.FunctionDef) and isinstance(target.returns, ast.Name):
        found = self._resolve_symbol(module, target.returns.id)
        target = self.defs[found[0]][found[1]] if found else None
      if _holds_config(target):
        names.add(node.targets[0].id)
    return frozenset(names)

  def walk(self, module: str, name: str, level: int = 0, above: tuple = (),
           carriers: frozenset = CARRIERS) -> None:
    """Walks from module.name, `level` calls below the entry; above: the modules of the
    functions on the call stack above it; carriers: its parameters that hold the config."""
    self.stops.append((module, name))
    self.positions.append((module, module in above))
    node = self.defs[module][name]
    if level >= self.depth or isinstance(node, ast.ClassDef):
      return
    calls = self._callees(module, node)
    carriers = carriers | self._holders(node, calls, carriers)
    for callee, call in calls:
      if callee in self.stops or not callee[0].startswith(self.scope):
        continue
      target = self.defs[callee[0]][callee[1]]
      passed = (_bound_carriers(target, call, carriers) if self.follow_config
                else frozenset())
      if self.follow_config and not passed and not isinstance(target, ast.ClassDef):
        continue
      if self.follow_config and isinstance(target, ast.ClassDef) and not _passes(call,
                                                                               carriers):
        continue
      self.walk(*callee, level + 1, above + (module,), passed)


def _holds_config(cls: ast.AST) -> bool:
  """Whether a class has a field named config (an object that holds the config)."""
  return isinstance(cls, ast.ClassDef) and any(
      isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
      and n.target.id == "config" for n in cls.body)


def _passes(call: ast.Call, carriers) -> bool:
  """Whether the call passes a carrier (a bare name) as an argument."""
  args = list(call.args) + [k.value for k in call.keywords]
  return any(isinstance(a, ast.Name) and a.id in carriers for a in args)


def _bound_carriers(func: ast.AST, call: ast.Call, carriers) -> frozenset:
  """The parameters of func that `call` binds to a carrier (a bare name among carriers)."""
  if not isinstance(func, ast.FunctionDef):
    return frozenset()
  params = [a.arg for a in func.args.posonlyargs + func.args.args]
  bound = set()
  for i, a in enumerate(call.args):
    if isinstance(a, ast.Name) and a.id in carriers and i < len(params):
      bound.add(params[i])
  for k in call.keywords:
    if isinstance(k.value, ast.Name) and k.value.id in carriers and k.arg:
      bound.add(k.arg)
  return frozenset(bound)


def counts(walker: Walker) -> dict:
  """stops, modules, returns to a module higher up, max visits per module (`Walker.walk`):
  a visit is a run of consecutive stops in one module; a return to a module higher up is a
  visit that begins in the module of a function on the call stack above (the walk coming
  back to a module it came down from)."""
  runs = []
  for module, is_return in walker.positions:
    if not runs or runs[-1][0] != module:
      runs.append((module, is_return))
  visits = {}
  for module, _ in runs:
    visits[module] = visits.get(module, 0) + 1
  return {"stops": len(walker.stops),
          "modules": len({m for m, _ in walker.stops}),
          "returns_to_a_higher_module": sum(is_return for _, is_return in runs),
          "max_visits_per_module": max(visits.values()),
          "visits": visits}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", default=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), help="the source tree (default: this checkout)")
  parser.add_argument("--depth", type=int, default=100, help="calls followed from the entry")
  parser.add_argument("--all_calls", action="store_true",
                      help="follow every call into the evaluation package, not only those that "
                           "pass the config")
  parser.add_argument("--show", action="store_true", help="also print the stops in order")
  args = parser.parse_args(argv)
  walker = Walker(read_modules(args.root), args.depth, follow_config=not args.all_calls)
  walker.walk(*ENTRY)
  result = counts(walker)
  if args.show:
    for module, name in walker.stops:
      print(f"  {module}.{name}")
  print(f"stops {result['stops']}, modules {result['modules']}, returns to a module higher up "
        f"{result['returns_to_a_higher_module']}, max visits per module "
        f"{result['max_visits_per_module']}")
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
