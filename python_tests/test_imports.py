"""The package's import graph: no circles (a module importing one that imports it back, directly or through
others, at any level of the file) and no private name imported from another module."""
import ast
import os

PKG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cbgan_ext")
COMPILED = {"cbgan_ext._C"}  # the extension: a leaf


def _modules():
    mods = {}
    for folder, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = "cbgan_ext." + os.path.relpath(path, PKG)[:-3].replace(os.sep, ".")
                mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return mods


def _graph():
    mods, graph, private = _modules(), {}, []
    for name, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        deps = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[:len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("cbgan_ext"):
                    target = node.module
                else:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods or sub in COMPILED:
                        deps.add(sub)
                    else:
                        deps.add(target)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append(f"{name} imports {alias.name} from {target}")
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        graph[name] = (deps & set(mods)) - {name}
    return graph, private


def _circles(graph):
    found = []

    def visit(start, node, path):
        for dep in graph[node]:
            if dep == start:
                found.append(" -> ".join(path + [start]))
            elif dep not in path and dep > start:  # each circle once, from its smallest module
                visit(start, dep, path + [dep])
    for m in graph:
        visit(m, m, [m])
    return found


def test_no_import_circles():
    graph, _ = _graph()
    assert len(graph) > 30
    assert not _circles(graph), _circles(graph)


def test_no_private_names_across_modules():
    _, private = _graph()
    assert not private, private


def test_the_checker_sees_edges_and_circles():
    graph, _ = _graph()
    assert "cbgan_ext.train.streams" in graph["cbgan_ext.train.gan"]
    assert "cbgan_ext.models.heads" in graph["cbgan_ext.models.bagan"]
    assert "cbgan_ext.train.augment_eval" in graph["cbgan_ext.pipeline"]  # imported inside a function
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
