"""The type stubs list exactly the public names of the native module."""
import ast
import importlib.resources

import batchgrad._core as core


def _stub_names():
    src = importlib.resources.files("batchgrad").joinpath("_core.pyi").read_text()
    tree = ast.parse(src)
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            members[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")}
    return top, members


def test_stub_names_match_the_module():
    top, members = _stub_names()
    assert top == {n for n in dir(core) if not n.startswith("_")}
    for cls, names in members.items():
        assert names == {n for n in dir(getattr(core, cls)) if not n.startswith("_")}, cls
