"""Every op of every exported graph is in TensorRT's ONNX-parser support list (kept as data)."""

from __future__ import annotations

import json

import pytest
from trt_fixtures import open_tiny

from sdrt.export.trt_ops import OPS_FILE, check_model_ops, check_trt_ops, supported_ops

onnx = pytest.importorskip("onnx")
helper = onnx.helper
TP = onnx.TensorProto


def test_support_list_is_data_with_version_and_source():
    data = json.loads(OPS_FILE.read_text(encoding="utf-8"))
    assert data["tensorrt_version"].startswith("10.")
    assert data["source"].startswith("https://github.com/onnx/onnx-tensorrt/") and data["source"].endswith("docs/operators.md")
    assert len(data["source_commit"]) == 40
    assert data["opset_range"] == [9, 20]
    ops = data["operators"]
    assert len(ops) > 150
    for op in ("Conv", "MatMul", "Softmax", "Resize", "GroupNormalization", "LayerNormalization", "Einsum"):
        assert ops[op]["supported"], op
    assert not ops["Unique"]["supported"]
    assert all(set(v) <= {"supported", "types", "restrictions", "experimental"} for v in ops.values())


def test_exported_tiny_graphs_only_use_supported_ops(tiny_artifacts, family):
    report = check_trt_ops(open_tiny(tiny_artifacts, family))
    assert report.ok, "\n".join(report.lines())
    assert set(report.op_counts) == {"text_encoder", "unet", "vae_decoder"}
    assert report.op_counts["unet"]["Conv"] > 0
    # restrictions this check can prove (constant axes, Resize modes, LayerNorm outputs) hold
    assert not report.restricted, "\n".join(f.line() for f in report.restricted)


def _model(nodes, *, inits=(), opset=17, domain_opsets=()):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TP.FLOAT, None)],
        initializer=list(inits),
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domain_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def test_unsupported_and_custom_ops_are_reported_with_node_names():
    model = _model(
        [
            helper.make_node("Unique", ["x"], ["u"], name="dedupe"),
            helper.make_node("FancyAttention", ["u"], ["y"], name="fused_attn", domain="com.example"),
        ],
        domain_opsets=["com.example"],
    )
    counts, findings = check_model_ops(model, "unet")
    assert counts == {"Unique": 1, "FancyAttention": 1}
    by_op = {f.op_type: f for f in findings}
    assert by_op["Unique"].status == "unsupported" and by_op["Unique"].nodes == ("dedupe",)
    assert "marked unsupported" in by_op["Unique"].detail
    assert by_op["FancyAttention"].status == "unsupported" and "plugin" in by_op["FancyAttention"].detail
    assert "com.example::FancyAttention" in by_op["FancyAttention"].line()


def test_ops_missing_from_the_list_and_bad_opsets_are_unsupported():
    model = _model([helper.make_node("NotAnOnnxOp", ["x"], ["y"], name="mystery")], opset=21)
    _, findings = check_model_ops(model, "vae_decoder")
    details = {f.op_type: f.detail for f in findings if f.status == "unsupported"}
    assert "not in TensorRT 10.1's operator list" in details["NotAnOnnxOp"]
    assert "opset 21 is outside the parser's range 9..20" in details["<opset>"]


def test_restrictions_are_checked_per_node():
    axes = helper.make_tensor("axes", TP.INT64, [1], [0])
    model = _model(
        [
            helper.make_node("Unsqueeze", ["x", "axes"], ["a"], name="const_axes"),  # meets it
            helper.make_node("Shape", ["x"], ["dyn"], name="shape"),
            helper.make_node("Slice", ["dyn", "axes", "axes"], ["dyn_axes"], name="slice"),  # no axes input: ok
            helper.make_node("Unsqueeze", ["a", "dyn_axes"], ["b"], name="dynamic_axes"),  # cannot prove
            helper.make_node("Resize", ["b", "", "scales"], ["c"], name="cubic", mode="cubic"),
            helper.make_node("Resize", ["c", "", "scales"], ["y"], name="nearest", mode="nearest",
                             coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        ],
        inits=[axes, helper.make_tensor("scales", TP.FLOAT, [4], [1, 1, 2, 2])],
    )
    _, findings = check_model_ops(model, "unet")
    restricted = {f.op_type: f.nodes for f in findings if f.status == "restricted"}
    assert restricted == {"Unsqueeze": ("dynamic_axes",), "Resize": ("cubic",)}
    assert not [f for f in findings if f.status == "unsupported"]


def test_subgraph_nodes_are_checked():
    then = helper.make_graph([helper.make_node("Unique", ["x"], ["t"], name="inner")], "then", [],
                             [helper.make_tensor_value_info("t", TP.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="id")], "else", [],
                              [helper.make_tensor_value_info("e", TP.FLOAT, None)])
    model = _model([
        helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TP.BOOL, [], [True])),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=other),
    ])
    _, findings = check_model_ops(model, "unet")
    unsupported = [(f.op_type, f.nodes) for f in findings if f.status == "unsupported"]
    assert unsupported == [("Unique", ("branch/inner",))]


def test_trt_ops_report_for_verify(tiny_artifacts, capsys):
    from sdrt.cli_build import trt_ops_report

    artifact = open_tiny(tiny_artifacts, "sd1")
    assert trt_ops_report(artifact.path) is True
    out = capsys.readouterr().out
    assert "TensorRT 10.1" in out and "trt-ops: OK" in out
    assert trt_ops_report(artifact.path, as_json=True) is True
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["tensorrt_version"] == supported_ops()["tensorrt_version"]
