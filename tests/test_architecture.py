"""The architecture rules, checked on the source: no import cycle, `sparse_ops` never
imports `bert_ipu`, product code never points at files users do not have."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bert_ipu", "sparse_ops")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.AST]:
    """Every import statement that can run: at module level or inside functions (a lazy
    import is still a dependency), but not under `if TYPE_CHECKING:` (annotations only)."""
    found: list[ast.AST] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            visit(child)

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        walk(node)

    walk(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports (see _runtime_imports)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_sparse_ops_never_imports_bert_ipu():
    for path in (ROOT / "sparse_ops").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+bert_ipu\b", text, re.M), path


def test_product_code_does_not_cite_files_users_do_not_have():
    """Users get the repository, not ../shared: no product module, config or doc may send
    them to a DESIGN section or the shared folder."""
    roots = [ROOT / p for p in PACKAGES] + [ROOT / "configs", ROOT / "tools", ROOT / "docs"]
    files = [p for r in roots for p in r.rglob("*") if p.suffix in (".py", ".md", ".yaml")]
    files += [ROOT / "README.md"]
    bad = [str(p.relative_to(ROOT)) for p in files
           if re.search(r"DESIGN(\.md| section)|\.\./shared", p.read_text())]
    assert bad == []


def test_the_config_reference_is_up_to_date():
    """docs/config_reference.md is generated from the schema; regenerate it with
    `python -m bert_ipu.config.reference` after changing a config field."""
    from bert_ipu.config import reference

    assert reference.DOC.read_text() == reference.reference_markdown()
