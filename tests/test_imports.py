"""The layering, read from the source: no import cycle under server/ and csm_core/ (imports
inside functions and under TYPE_CHECKING count), and no front end imports another one (each
goes through server/front/), engine files of at most 300 lines, benchmarks outside server/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "csm_core")
# The transports and their modules: each may import server/front, none may import another.
FRONT_ENDS = {"speech": ("server.servicer",), "converse": ("server.converse",),
              "http": ("server.http_api", "server.openai_speech", "server.openai_voices"), "voices": ("server.voices.servicer",)}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module `path` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in known)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_under_server_and_csm_core():
    assert cycles(graph()) == []


def test_front_ends_import_no_other_front_end():
    edges = graph()

    def front_end(name: str) -> str | None:
        return next((end for end, prefixes in FRONT_ENDS.items()
                     if any(name == p or name.startswith(p + ".") for p in prefixes)), None)

    crossings = [(name, dep) for name, deps in edges.items() for dep in deps
                 if front_end(name) and front_end(dep) and front_end(dep) != front_end(name)]
    assert crossings == []
    assert all("server.front.engine_client" in deps or "server.front.door" in deps
               for name, deps in edges.items() if name in ("server.servicer", "server.converse.call", "server.http_api"))


def test_engine_files_stay_small_and_benchmarks_live_outside_the_server():
    sizes = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "server" / "engine").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 300} == {}
    assert not list((ROOT / "server").glob("bench*.py")) and (ROOT / "csm_bench" / "cli.py").is_file()
