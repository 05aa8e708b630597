"""One owner per field: no module of the node assigns (or deletes) another object's attributes.
Each class changes its own fields (`self.x = ...`); everyone else calls a method, so there is one
place to log and assert (state.py's rule, and STYLE.md's)."""

import ast
import pathlib

NODE = pathlib.Path(__file__).resolve().parents[2] / "solution" / "node"
# Attributes of other libraries' objects, set the way those libraries ask to be configured.
LIBRARY_SETTINGS = {"fn.argtypes",  # ctypes: a foreign function's signature
                    "events.notify_and_call_entry_points",  # gevent: skip the plugin scan
                    "ctx.minimum_version", "ctx.check_hostname", "ctx.verify_mode"}  # ssl.SSLContext


def _foreign(target):
    """The attribute written by an assignment target, unless it is one of self's own."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for t in target.elts:
            yield from _foreign(t)
        return
    if isinstance(target, ast.Starred):
        yield from _foreign(target.value)
        return
    while isinstance(target, ast.Subscript):  # obj.table[k] = v changes obj.table
        target = target.value
    if isinstance(target, ast.Attribute) and not (isinstance(target.value, ast.Name) and target.value.id == "self"):
        yield ast.unparse(target)


def foreign_writes(path):
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        else:
            continue
        out += [f"{path.name}:{node.lineno}: {t}" for target in targets for t in _foreign(target)]
    return out


def test_no_module_assigns_another_objects_attributes():
    found = [w for path in sorted(NODE.glob("*.py")) for w in foreign_writes(path)
             if w.split(": ")[1] not in LIBRARY_SETTINGS]
    assert found == []


def test_the_checker_sees_foreign_writes(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("self.a = 1\nother.b = 2\nself.c.d = 3\ns.conns[k] = v\nx, y.z = 1, 2\n"
                     "self.t[k] = 1\ndel s.conns[k]\n")
    assert [w.split(": ")[1] for w in foreign_writes(probe)] == ["other.b", "self.c.d", "s.conns", "y.z",
                                                                 "s.conns"]


def test_close_reasons_and_changes_are_never_compared_as_strings():
    """Policy reads Reason and Change members; a reworded log line cannot change behaviour."""
    words = {r.value for r in __import__("node.session", fromlist=["Reason"]).Reason}
    words |= {c.value for c in __import__("node.state", fromlist=["Change"]).Change}
    words |= {s.value for s in __import__("node.state", fromlist=["Source"]).Source}
    found = []
    for path in sorted(NODE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for c in [node.left, *node.comparators]:
                    if isinstance(c, ast.Constant) and c.value in words:
                        found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
