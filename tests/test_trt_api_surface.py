"""Every TensorRT / Polygraphy / cuda-python name our TensorRT code uses exists in those APIs.

TensorRT cannot be installed without a GPU, so the TensorRT 10 API is read from the
``tensorrt-stubs`` package's ``.pyi`` text (``pip install --no-deps tensorrt-stubs``). Those
stubs do not parse as Python (a parameter named ``in``, non-default after default arguments,
CRLF line ends), so :func:`parse_stubs` reads them line by line: classes (with bases and nested
classes), their methods, properties and enum members, and module-level names.

What the code uses is collected by walking its AST:

* ``trt.X.Y...`` attribute chains (``trt`` is always the name of the tensorrt module);
* methods and properties called on TensorRT objects, which the code keeps in variables with
  fixed names (:data:`TRT_OBJECTS`, e.g. ``context`` is always an ``IExecutionContext``);
* ``cudart.X.Y`` chains and ``prop.X`` (a ``cudaDeviceProp``), checked on cuda-python;
* names imported from Polygraphy, and every keyword argument passed to them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS_VERSION = "10.13.0.35.1"  # the tensorrt-stubs release CI installs (TensorRT 10.13 API)
MODULES = [
    ROOT / "export" / "trt_build.py",
    ROOT / "runtime" / "backends" / "tensorrt.py",
    ROOT / "benchmarks" / "trt_latency.py",
    ROOT / "tests" / "test_trt_gpu.py",
]
#: variable/attribute name -> the TensorRT class it always holds in our code
TRT_OBJECTS = {
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "_runtime": "Runtime",
    "serialized": "IHostMemory",
}
#: variable name -> cuda-python runtime class it always holds
CUDART_OBJECTS = {"prop": "cudaDeviceProp"}
#: variable name -> Polygraphy class it always holds
POLYGRAPHY_OBJECTS = {"profile": ("polygraphy.backend.trt", "Profile")}


# -- stub parsing --------------------------------------------------------------------------


class Stubs:
    def __init__(self) -> None:
        self.module: set[str] = set()  # names visible as tensorrt.X
        self.classes: dict[str, set[str]] = {}  # qualified class name -> member names
        self.bases: dict[str, list[str]] = {}

    def members(self, cls: str) -> set[str]:
        out = set(self.classes.get(cls, ()))
        for base in self.bases.get(cls, ()):
            out |= self.members(base)
        return out

    def check_chain(self, chain: list[str]) -> str | None:
        """None if ``tensorrt.<chain>`` exists, else the first missing part."""
        head, *rest = chain
        if head not in self.module:
            return head
        cls = head if head in self.classes else None
        path = head
        for part in rest:
            if cls is None or part.startswith("__"):
                return None  # a function / value / dunder: nothing more to check in the stubs
            if part not in self.members(cls):
                return f"{path}.{part}"
            path = f"{path}.{part}"
            nested = f"{cls}.{part}"
            cls = nested if nested in self.classes else None
        return None


_CLASS = re.compile(r"^(\s*)class (\w+)(?:\((.*)\))?:")
_DEF = re.compile(r"^(\s*)def (\w+)\(")
_ATTR = re.compile(r"^(\s*)(\w+)\s*[:=]")
_IMPORT = re.compile(r"^from [\w.]+ import (\w+)(?: as (\w+))?|^import [\w.]+ as (\w+)")


def parse_stubs(texts: list[str]) -> Stubs:
    stubs = Stubs()
    for text in texts:
        stack: list[tuple[int, str]] = []  # (indent, qualified class name)
        for raw in text.replace("\r\n", "\n").split("\n"):
            if not raw.strip() or raw.lstrip().startswith(("#", '"', "'", ":", "@")):
                continue
            indent = len(raw) - len(raw.lstrip())
            while stack and indent <= stack[-1][0]:
                stack.pop()
            if indent == 0 and (m := _IMPORT.match(raw)):
                stubs.module.add(m.group(2) or m.group(1) or m.group(3))
                continue
            if m := _CLASS.match(raw):
                name = m.group(2)
                qual = f"{stack[-1][1]}.{name}" if stack else name
                if stack:
                    stubs.classes[stack[-1][1]].add(name)
                else:
                    stubs.module.add(name)
                stubs.classes.setdefault(qual, set())
                stubs.bases[qual] = [b.strip().split(".")[-1] for b in (m.group(3) or "").split(",") if b.strip()]
                stack.append((indent, qual))
                continue
            m = _DEF.match(raw) or _ATTR.match(raw)
            if not m:
                continue
            if stack and indent == stack[-1][0] + 4:
                stubs.classes[stack[-1][1]].add(m.group(2))
            elif not stack and indent == 0:
                stubs.module.add(m.group(2))
    return stubs


@lru_cache(maxsize=1)
def tensorrt_stubs() -> Stubs:
    from importlib import metadata

    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        hint = f"tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs=={STUBS_VERSION}"
        if os.environ.get("CI"):
            pytest.fail(f"{hint} (CI must run the TensorRT API surface check)")
        pytest.skip(hint)
    files = [f for f in dist.files or () if str(f) in ("tensorrt/__init__.pyi", "tensorrt_bindings/tensorrt.pyi")]
    assert len(files) == 2, f"unexpected tensorrt-stubs layout: {dist.files}"
    init, bindings = sorted(files, key=str)
    stubs = parse_stubs([Path(dist.locate_file(bindings)).read_text(encoding="utf-8")])
    init_stubs = parse_stubs([Path(dist.locate_file(init)).read_text(encoding="utf-8")])
    stubs.module = init_stubs.module  # tensorrt.X is what tensorrt/__init__ re-exports
    return stubs


# -- AST collection ----------------------------------------------------------------------------


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def attribute_chains(tree: ast.AST) -> list[tuple[list[str], int]]:
    """Every maximal ``a.b.c`` chain rooted at a plain name, with its line number."""
    out: list[tuple[list[str], int]] = []

    class Visitor(ast.NodeVisitor):
        def visit_Attribute(self, node: ast.Attribute) -> None:
            chain = _chain(node)
            if chain is not None:
                out.append((chain, node.lineno))
            else:
                self.generic_visit(node)

    Visitor().visit(tree)
    return out


def _sources() -> dict[Path, ast.AST]:
    return {p: ast.parse(p.read_text(encoding="utf-8")) for p in MODULES if p.is_file()}


def used_tensorrt(trees: dict[Path, ast.AST]) -> dict[str, list[str]]:
    """``{"trt.A.B": [where used]}`` for module chains, ``{"Class.member": [...]}`` for objects."""
    used: dict[str, list[str]] = {}
    for path, tree in trees.items():
        for chain, line in attribute_chains(tree):
            where = f"{path.relative_to(ROOT)}:{line}"
            if chain[0] == "trt":
                used.setdefault(".".join(chain), []).append(where)
                continue
            for i, part in enumerate(chain[:-1]):
                if part in TRT_OBJECTS:
                    used.setdefault(f"{TRT_OBJECTS[part]}.{chain[i + 1]}", []).append(where)
    return used


# -- tests ------------------------------------------------------------------------------------------


def test_stub_parser_sees_tensorrt_10_api():
    stubs = tensorrt_stubs()
    assert {"Builder", "Runtime", "ICudaEngine", "IExecutionContext", "nptype", "__version__"} <= stubs.module
    assert "execute_async_v3" in stubs.members("IExecutionContext")
    assert "USER_MANAGED" in stubs.members("ExecutionContextAllocationStrategy")
    assert "WARNING" in stubs.members("Logger")  # inherited from ILogger
    assert "VERBOSE" in stubs.members("ILogger.Severity")  # nested class
    assert stubs.check_chain(["ICudaEngine", "no_such_method"]) == "ICudaEngine.no_such_method"
    assert stubs.check_chain(["NoSuchClass"]) == "NoSuchClass"


def test_collector_finds_what_the_code_uses():
    used = used_tensorrt(_sources())
    for name in (
        "trt.ExecutionContextAllocationStrategy.USER_MANAGED",
        "trt.TensorIOMode.INPUT",
        "trt.Logger.WARNING",
        "trt.nptype",
        "IExecutionContext.set_input_shape",
        "IExecutionContext.set_tensor_address",
        "IExecutionContext.execute_async_v3",
        "IExecutionContext.set_device_memory",
        "ICudaEngine.device_memory_size_v2",
        "Runtime.deserialize_cuda_engine",
    ):
        assert name in used, name


def test_every_tensorrt_name_used_exists_in_the_stubs():
    stubs = tensorrt_stubs()
    missing = {}
    for name, where in used_tensorrt(_sources()).items():
        head, *rest = name.split(".")
        if head == "trt":
            bad = stubs.check_chain(rest)
        else:
            bad = None if rest[0] in stubs.members(head) else name
        if bad:
            missing[name] = (bad, where)
    assert not missing, f"names not in the TensorRT 10 stubs: {missing}"


def test_a_misspelled_tensorrt_name_would_be_caught():
    tree = ast.parse("def f(trt, engine):\n    trt.Runtime(trt.Logger.WARNING)\n    engine.get_binding_index('x')\n")
    used = used_tensorrt({ROOT / "fake.py": tree})
    stubs = tensorrt_stubs()
    assert "ICudaEngine.get_binding_index" in used  # TensorRT 8 API, removed in 10
    assert "get_binding_index" not in stubs.members("ICudaEngine")


def _polygraphy_uses(trees: dict[Path, ast.AST]) -> tuple[dict[str, object], list[tuple[object, list[str], str]]]:
    """Imported Polygraphy objects by local name, and (callable, keyword names, where) per call."""
    imported: dict[str, object] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polygraphy"):
                mod = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(mod, alias.name), f"{node.module}.{alias.name} does not exist"
                    imported[alias.asname or alias.name] = getattr(mod, alias.name)
    calls = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            chain = _chain(node.func)
            target = None
            if chain and len(chain) == 1 and chain[0] in imported:
                target = imported[chain[0]]
            elif chain and len(chain) == 2 and chain[0] in POLYGRAPHY_OBJECTS:
                mod, cls = POLYGRAPHY_OBJECTS[chain[0]]
                owner = getattr(importlib.import_module(mod), cls)
                assert hasattr(owner, chain[1]), f"{cls}.{chain[1]} does not exist"
                target = getattr(owner, chain[1])
            if target is not None:
                calls.append((target, [k.arg for k in node.keywords if k.arg], f"{path.name}:{node.lineno}"))
    return imported, calls


def _parameters(obj: object) -> tuple[set[str], bool]:
    """Keyword names ``obj`` accepts; for ``**kwargs`` forwarders, those of the base initializers."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(fn).parameters
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    forwards = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if forwards and inspect.isclass(obj):
        for base in obj.__mro__[1:]:
            if "__init__" in vars(base):
                names |= set(inspect.signature(base.__init__).parameters)
        forwards = False
    return names, forwards


def test_polygraphy_names_and_keywords_exist():
    pytest.importorskip("polygraphy")
    imported, calls = _polygraphy_uses(_sources())
    assert {"CreateConfig", "NetworkFromOnnxPath", "Profile", "engine_bytes_from_network"} <= set(imported)
    assert calls
    for target, keywords, where in calls:
        names, forwards = _parameters(target)
        unknown = [k for k in keywords if k not in names]
        assert forwards or not unknown, f"{where}: {getattr(target, '__qualname__', target)} has no parameters {unknown}"


def test_cuda_python_names_exist():
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    for path, tree in _sources().items():
        for chain, line in attribute_chains(tree):
            where = f"{path.name}:{line}"
            if chain[0] == "cudart":
                obj = cudart
                for part in chain[1:]:
                    assert hasattr(obj, part), f"{where}: cudart.{'.'.join(chain[1:])} does not exist"
                    obj = getattr(obj, part)
            elif chain[0] in CUDART_OBJECTS and len(chain) == 2:
                cls = getattr(cudart, CUDART_OBJECTS[chain[0]])
                assert hasattr(cls(), chain[1]), f"{where}: {cls.__name__}.{chain[1]} does not exist"
