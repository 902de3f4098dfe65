"""The architecture rules, checked on the source: the packages' layer order (LAYERS: a
package imports only from layers below it, or its own package), no import cycle,
`sparse_ops` never imports `bert_ipu`, product code never points at files users do not
have. Imports inside functions count (a lazy import is still a dependency), and so do the
parent packages an import runs (`import a.b.c` runs `a/__init__.py` and `a/b/__init__.py`);
imports under `if TYPE_CHECKING:` are annotations only, listed separately."""
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


# Bottom to top; a package may import from its own package and from lower layers only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sparse_ops",),                                    # kernels, formats, DynSp (no bert_ipu)
    ("bert_ipu", "bert_ipu.schema", "bert_ipu.fsutil", "bert_ipu.userfiles", "bert_ipu.cliutil",
     "bert_ipu.logs", "bert_ipu.trackers"),
    ("bert_ipu.data",),                                 # corpora, tokenizer, masking, cache
    ("bert_ipu.model",),                                # BERT, sizes, the HF mapping
    ("bert_ipu.devices",),                              # hardware facts (no step runners)
    ("bert_ipu.config",),                               # the run config and its checks
    ("bert_ipu.store",),                                # checkpoints, vocabulary file, locks
    ("bert_ipu.hub",),                                  # read / export pre-trained models
    ("bert_ipu.train",),                                # the trainer and its step runners
    ("bert_ipu.sweep", "bert_ipu.finetune", "bert_ipu.export", "bert_ipu.pretrain",
     "bert_ipu.launch"),                                # the command lines and workflows
)


def package_of(module: str) -> str:
    """The unit of LAYERS a module belongs to (`bert_ipu.train.step` -> `bert_ipu.train`)."""
    parts = module.split(".")
    return parts[0] if parts[0] == "sparse_ops" else ".".join(parts[:2])


def layer_of(package: str) -> int | None:
    return next((i for i, names in enumerate(LAYERS) if package in names), None)


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import from a package to one in a higher layer, or to another
    package of its own layer (above the utilities), or of a package without a layer."""
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            pa, pb = package_of(a), package_of(b)
            if pa == pb:
                continue
            la, lb = layer_of(pa), layer_of(pb)
            if la is None or lb is None or lb > la or (lb == la and la > 1):
                bad.append(f"{a} -> {b}")
    return bad


def _with_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each import also runs the __init__ of every package above its target."""
    out = {}
    for a, targets in graph.items():
        edges = set(targets)
        for b in targets:
            parts = b.split(".")
            edges |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in graph}
        out[a] = {e for e in edges if e != a and not a.startswith(e + ".")}
    return out


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


def test_every_package_has_a_layer_and_imports_only_downward():
    graph = _with_parents(import_graph())
    missing = sorted({package_of(m) for m in graph} - {p for names in LAYERS for p in names})
    assert missing == [], f"give these packages a layer in LAYERS: {missing}"
    assert upward_edges(graph) == []


def test_the_layer_check_finds_a_planted_upward_import():
    graph = {m: set(e) for m, e in import_graph().items()}
    graph["bert_ipu.devices.base"].add("bert_ipu.train.step")    # the old runner import
    assert upward_edges(graph) == ["bert_ipu.devices.base -> bert_ipu.train.step"]
    graph = {m: set(e) for m, e in import_graph().items()}
    graph["bert_ipu.data.cache"].add("bert_ipu.config")
    assert upward_edges(graph) == ["bert_ipu.data.cache -> bert_ipu.config"]


def test_the_layer_check_sees_parent_packages():
    """`import bert_ipu.train.step` from below runs bert_ipu/train/__init__.py too."""
    graph = _with_parents({"bert_ipu.devices.base": {"bert_ipu.train.step"}, "bert_ipu.train": set(),
                           "bert_ipu.train.step": set(), "bert_ipu": set()})
    assert graph["bert_ipu.devices.base"] == {"bert_ipu.train.step", "bert_ipu.train"}


def type_only_upward_edges() -> list[str]:
    """Imports under `if TYPE_CHECKING:` that point up the layers (annotations only: they
    never run, and are listed here rather than refused)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    out = []
    for name, path in sorted(files.items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.If) and _is_type_checking(node):
                for child in node.body:
                    if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] in PACKAGES:
                        out += upward_edges({name: {child.module}})
    return out


def test_type_only_upward_edges_are_only_annotations():
    edges = type_only_upward_edges()
    runtime = set(upward_edges(_with_parents(import_graph())))
    assert not runtime & set(edges)


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


def test_one_log_type():
    """Issue 21: `Log = Callable[[str], None]` was defined 7 times and spelled out in 22
    signatures; it is defined once (bert_ipu/logs.py) and imported everywhere else."""
    spelled = [str(p.relative_to(ROOT)) for p in (ROOT / "bert_ipu").rglob("*.py")
               if "Callable[[str], None]" in p.read_text() and p.name != "logs.py"]
    assert spelled == []
