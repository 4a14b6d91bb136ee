"""Does TensorRT's ONNX parser support every operator in an artifact's graphs?

The support list is data (``data/trt_onnx_ops.json``): ONNX-TensorRT's published Operator
Support Matrix (``docs/operators.md``), with the TensorRT version and the exact source it was
converted from. This check needs neither TensorRT nor a GPU, so it runs in CI; the GPU build
(``sdrt build``) is the final word.

Findings, per component and op type, with the node names that use it:

* ``unsupported``: the matrix marks the op N, or does not list it, or the op comes from a
  non-ONNX domain (a custom op TensorRT would need a plugin for), or the graph's opset is outside
  the parser's range; the artifact will not build.
* ``restricted``: supported with restrictions that this check cannot prove the node meets;
  reported so a person can look at those nodes, but not a failure. Restrictions it can check
  (constant ``axes`` inputs, ``Resize`` modes, ``Constant`` attributes, ``LayerNormalization``
  outputs) are checked per node, and nodes that meet them are not reported.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

from sdrt.runtime.manifest import Artifact

OPS_FILE = Path(__file__).with_name("data") / "trt_onnx_ops.json"
ONNX_DOMAINS = ("", "ai.onnx")


@lru_cache(maxsize=1)
def supported_ops() -> Mapping[str, Any]:
    """The parsed ``trt_onnx_ops.json`` (version, source, opset range, operators)."""
    return json.loads(OPS_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class OpFinding:
    component: str
    op_type: str
    domain: str
    status: str  # "unsupported" | "restricted"
    detail: str
    nodes: tuple[str, ...]

    def line(self, max_nodes: int = 5) -> str:
        shown = ", ".join(self.nodes[:max_nodes]) + (f", ... ({len(self.nodes)} nodes)" if len(self.nodes) > max_nodes else "")
        op = f"{self.domain}::{self.op_type}" if self.domain not in ONNX_DOMAINS else self.op_type
        return f"{self.status:11s} {self.component}: {op}: {self.detail} [nodes: {shown or '-'}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component, "op_type": self.op_type, "domain": self.domain,
            "status": self.status, "detail": self.detail, "nodes": list(self.nodes),
        }


@dataclass(frozen=True)
class TrtOpsReport:
    tensorrt_version: str
    source: str
    op_counts: Mapping[str, Mapping[str, int]]  # component -> op type -> node count
    findings: tuple[OpFinding, ...]

    @property
    def unsupported(self) -> tuple[OpFinding, ...]:
        return tuple(f for f in self.findings if f.status == "unsupported")

    @property
    def restricted(self) -> tuple[OpFinding, ...]:
        return tuple(f for f in self.findings if f.status == "restricted")

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def lines(self) -> list[str]:
        out = [f"TensorRT {self.tensorrt_version} ONNX parser support list ({self.source})"]
        for comp, counts in self.op_counts.items():
            out.append(f"{comp}: {sum(counts.values())} nodes, {len(counts)} op types")
        out += [f.line() for f in (*self.unsupported, *self.restricted)]
        out.append(
            "trt-ops: OK (no unsupported ops)" if self.ok
            else f"trt-ops: {len(self.unsupported)} unsupported op type(s)"
        )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "tensorrt_version": self.tensorrt_version,
            "source": self.source,
            "ok": self.ok,
            "op_counts": {c: dict(v) for c, v in self.op_counts.items()},
            "findings": [f.to_json() for f in self.findings],
        }


def _walk(graph: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(node name, NodeProto)`` of every node, including If/Loop/Scan subgraphs."""
    import onnx

    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}_{i}")
        yield name, node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g, name + "/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk(g, name + "/")


#: Restrictions from the matrix that can be checked on the graph: "`axes` must be an
#: initializer" (Slice, Squeeze), "`axes` must be a constant tensor" (Unsqueeze), "`axis` must be
#: an initializer" (CumSum), "`K` input must be an initializer" (TopK): op -> input index.
_CONSTANT_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "CumSum": 1, "TopK": 1}
#: Resize attributes the matrix lists as supported (anything else is reported).
_RESIZE_OK = {
    "coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"},
    "mode": {"nearest", "linear"},
    "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
    "keep_aspect_ratio_policy": {"stretch"},
}


def _meets_restriction(node: Any, constants: set[str]) -> bool:
    """True when ``node`` provably satisfies its op's restriction (checked ones only)."""
    import onnx

    op = node.op_type
    if op in _CONSTANT_INPUT:
        i = _CONSTANT_INPUT[op]
        return len(node.input) <= i or not node.input[i] or node.input[i] in constants
    if op == "Constant":  # "`sparse_value`, `value_string`, and `value_strings` attributes are unsupported."
        return not {a.name for a in node.attribute} & {"sparse_value", "value_string", "value_strings"}
    if op == "LayerNormalization":  # "Only the first output `Y` is supported."
        return all(not o for o in node.output[1:])
    if op == "Resize":
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("antialias", 0):
            return False
        return all(
            (v.decode() if isinstance(v, bytes) else v) in _RESIZE_OK[k]
            for k, v in attrs.items() if k in _RESIZE_OK
        )
    return False


def check_model_ops(model: Any, component: str) -> tuple[dict[str, int], list[OpFinding]]:
    """Op counts and findings for one ``onnx.ModelProto`` (model-local functions are inlined)."""
    data = supported_ops()
    table = data["operators"]
    lo, hi = data["opset_range"]
    functions = {(f.domain, f.name): f for f in model.functions}
    counts: dict[str, int] = defaultdict(int)
    nodes: dict[tuple[str, str], list[str]] = defaultdict(list)
    unproven: dict[tuple[str, str], list[str]] = defaultdict(list)
    walked: list[tuple[str, Any]] = []
    pending = list(_walk(model.graph))
    while pending:
        name, node = pending.pop(0)
        if (node.domain, node.op_type) in functions:
            pending.extend((f"{name}/{n}", fn) for n, fn in _walk(functions[(node.domain, node.op_type)]))
            continue
        walked.append((name, node))
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for _, n in walked if n.op_type == "Constant" for o in n.output}
    for name, node in walked:
        key = (node.domain, node.op_type)
        counts[node.op_type] += 1
        nodes[key].append(name)
        if not _meets_restriction(node, constants):
            unproven[key].append(name)

    findings = []
    for opset in model.opset_import:
        if opset.domain in ONNX_DOMAINS and not lo <= opset.version <= hi:
            findings.append(OpFinding(
                component, "<opset>", "", "unsupported",
                f"opset {opset.version} is outside the parser's range {lo}..{hi}; re-export with "
                f"`sdrt export --opset {min(max(opset.version, lo), hi)}`", (),
            ))
    for (domain, op), names in sorted(nodes.items()):
        entry = table.get(op) if domain in ONNX_DOMAINS else None
        if domain not in ONNX_DOMAINS:
            findings.append(OpFinding(component, op, domain, "unsupported",
                                      "custom-domain op: TensorRT needs a plugin for it", tuple(names)))
        elif entry is None:
            findings.append(OpFinding(component, op, domain, "unsupported",
                                      f"not in TensorRT {data['tensorrt_version']}'s operator list", tuple(names)))
        elif not entry["supported"]:
            findings.append(OpFinding(component, op, domain, "unsupported",
                                      f"marked unsupported (N) for TensorRT {data['tensorrt_version']}", tuple(names)))
        elif entry.get("restrictions") and unproven[(domain, op)]:
            findings.append(OpFinding(component, op, domain, "restricted", entry["restrictions"],
                                      tuple(unproven[(domain, op)])))
    return dict(counts), findings


def check_trt_ops(artifact: Artifact | str | Path) -> TrtOpsReport:
    """Check every component graph of ``artifact`` against the support list (weights not loaded)."""
    import onnx

    if not isinstance(artifact, Artifact):
        artifact = Artifact.open(artifact)
    counts: dict[str, dict[str, int]] = {}
    findings: list[OpFinding] = []
    for name in artifact.manifest.components:
        model = onnx.load(str(artifact.component_path(name)), load_external_data=False)
        counts[name], f = check_model_ops(model, name)
        findings += f
    data = supported_ops()
    return TrtOpsReport(
        tensorrt_version=data["tensorrt_version"], source=data["source"],
        op_counts=counts, findings=tuple(findings),
    )
