"""Engine report: the DETAILED build log and the inspector JSON (TensorRT 10 and 11) give one report."""

from __future__ import annotations

import json

from onnx import parser

from optgraph.runtime.engine import EngineReport, account, compare, flags, parse_build_log, parse_inspector_json

LOG = [
    "[VERBOSE] Engine Layer Information:\n"
    "Name: __myl_Move_myl0_0, LayerType: kgen, Inputs: [ { Name: x, Dimensions: [1,3,8,8], Strides: [192,64,8,1], "
    "StrideOrder: [3,2,1,0], Datatype: Float, Format: (Linear) Row major linear format }], Constants: [], "
    "Outputs: [ { Name: t0, Dimensions: [1,3,8,8], Strides: [192,1,24,3], StrideOrder: [3,0,2,1], "
    "Datatype: Half, Format: (NHWC) Channel major format }], TacticName: __myl_Move_0x1, StreamId: 0, Metadata: ",
    "Name: __myl_CorrAddRelu_myl0_1, LayerType: runtime_fusion, Inputs: [ { Name: t0, Dimensions: [1,3,8,8], "
    "Strides: [192,1,24,3], StrideOrder: [3,0,2,1], Datatype: Half, Format: (NHWC) Channel major format }], "
    "Constants: [ { Name: w, Dimensions: [4,3,3,3], Strides: [27,1,9,3], StrideOrder: [3,0,2,1], Datatype: Half, "
    "Format: (NHWC) Channel major format }], Outputs: [ { Name: y, Dimensions: [1,4,8,8], Strides: [256,64,8,1], "
    "StrideOrder: [3,2,1,0], Datatype: Half, Format: (Linear) Row major linear format }], TacticName: , "
    "StreamId: 0, Metadata: [ONNX Layer: conv | fused (ConvRelu_1)][ONNX Layer: relu | fused (ConvRelu_1)][ONNX Layer: add]",
    "Name: sync, LayerType: signal, Inputs: [], Constants: [], Outputs: [], TacticName: , StreamId: 1, Metadata: ",
    "[INFO] Total Activation Memory: 4096 bytes",
    "[INFO] Total Weights Memory: 216 bytes",
]

# The same engine as the inspector writes it. TensorRT 10: "Format/Datatype" in one phrase.
JSON_10 = {"Layers": [
    {"Name": "__myl_Move_myl0_0", "LayerType": "kgen",
     "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [1, 3, 8, 8], "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "t0", "Location": "Device", "Dimensions": [1, 3, 8, 8], "Format/Datatype": "Channel major FP16 format"}],
     "TacticName": "__myl_Move_0x1", "StreamId": 0, "Metadata": ""},
    {"Name": "__myl_CorrAddRelu_myl0_1", "LayerType": "runtime_fusion",
     "Inputs": [{"Name": "t0", "Location": "Device", "Dimensions": [1, 3, 8, 8], "Format/Datatype": "Channel major FP16 format"}],
     "Outputs": [{"Name": "y", "Location": "Device", "Dimensions": [1, 4, 8, 8], "Format/Datatype": "Row major linear FP16 format"}],
     "TacticName": "", "StreamId": 0,
     "Metadata": "[ONNX Layer: conv | fused (ConvRelu_1)][ONNX Layer: relu | fused (ConvRelu_1)][ONNX Layer: add]"},
    {"Name": "sync", "LayerType": "signal", "Inputs": [], "Outputs": [], "StreamId": 1, "Metadata": ""},
], "Bindings": ["x", "y"]}
# TensorRT 11: "Datatype" and "Format" apart.
JSON_11 = json.loads(json.dumps(JSON_10))
for layer in JSON_11["Layers"]:
    for t in layer["Inputs"] + layer["Outputs"]:
        phrase = t.pop("Format/Datatype")
        t["Datatype"] = "Half" if "FP16" in phrase else "Float"
        t["Format"] = phrase

MODEL = parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[4,3,3,3] w> {
    s = Shape(x)  [fused] c = local.ConvRelu_1(x, w)  [add] y = Add(c, c)  [reshape] r = Reshape(x, s)
}
""")


def _summary(r: EngineReport) -> tuple:  # type: ignore[type-arg]
    return ([(layer.name, layer.type, layer.onnx_nodes, [t.dtype for t in layer.inputs],
              [t.dtype for t in layer.outputs], layer.stream) for layer in r.layers], r.num_layers, r.standalone_kernels)


def test_build_log_layers_totals_and_precision():
    r = parse_build_log(LOG)
    assert r.num_layers == 2  # the signal record is stream sync, not a layer
    assert r.standalone_kernels == 1 and r.reformats == 1
    assert r.layers[1].onnx_nodes == ("fused", "add")  # inlined function nodes count as their call
    assert (r.activation_bytes, r.weights_bytes) == (4096, 216)
    assert r.precision() == {"layers": {"Half": 2}, "tensors": {"Float": 1, "Half": 2}}


def test_inspector_json_10_and_11_give_the_build_log_report():
    expected = _summary(parse_build_log(LOG))
    assert _summary(parse_inspector_json(json.dumps(JSON_10))) == expected
    assert _summary(parse_inspector_json(JSON_11)) == expected


def test_accounting_covers_every_node():
    acc = account(parse_build_log(LOG), MODEL)
    assert (acc.in_layers, acc.folded, acc.eliminated, acc.unaccounted) == (2, ["Shape#0"], ["reshape"], [])
    assert acc.accounted_share == 1.0
    dropped = parse_build_log([line.replace("[ONNX Layer: add]", "") for line in LOG])
    assert account(dropped, MODEL).unaccounted == ["add"]


def test_a_constant_scale_merged_into_the_layer_reading_it_is_accounted() -> None:
    """Attention's q and k scaling: TensorRT merges the scalar Mul into the GEMM and names only
    the GEMM; a Mul whose reader no layer names stays unaccounted."""
    model = parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x, float[4,4] k) => (float[1,4] y) <float s = {0.5}> {
        [scale] q = Mul(x, s)  [mm] y = MatMul(q, k)
    }
    """)
    log = [LOG[0], LOG[1].replace("[ONNX Layer: conv | fused (ConvRelu_1)][ONNX Layer: relu | fused (ConvRelu_1)]"
                                  "[ONNX Layer: add]", "[ONNX Layer: mm]")]
    acc = account(parse_build_log(log), model)
    assert (acc.in_layers, acc.eliminated, acc.unaccounted) == (1, ["scale"], [])
    unnamed = [LOG[0], log[1].replace("[ONNX Layer: mm]", "")]
    assert account(parse_build_log(unnamed), model).unaccounted == ["scale", "mm"]


def test_a_duplicate_computed_once_is_accounted() -> None:
    """GPT-2's per-layer attention masks: TensorRT computes two equal Wheres once and names one.
    Constants compare by value, so a copy under another name is still the same computation."""
    model = parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool[4] c, float[4] x) => (float[4] y) {
        [one] a = Constant <value = float[1] {1.0}> ()  [other] b = Constant <value = float[1] {1.0}> ()
        [w0] m0 = Where(c, x, a)  [w1] m1 = Where(c, x, b)  [add] y = Add(m0, m1)
    }
    """)
    named = [LOG[0], LOG[1].replace("[ONNX Layer: conv | fused (ConvRelu_1)][ONNX Layer: relu | fused (ConvRelu_1)]"
                                    "[ONNX Layer: add]", "[ONNX Layer: w1][ONNX Layer: add]")]
    acc = account(parse_build_log(named), model)
    assert (acc.in_layers, acc.eliminated, acc.unaccounted) == (2, ["w0"], [])
    model.graph.node[1].attribute[0].t.float_data[0] = 2.0  # b = 2: no longer the same Where
    assert account(parse_build_log(named), model).unaccounted == ["w0"]


def test_json_round_trip():
    r = parse_build_log(LOG)
    r.accounting = account(r, MODEL)
    again = EngineReport.from_json(json.loads(json.dumps(r.to_json())))
    assert again.to_json() == r.to_json()


def test_flags_and_compare():
    r = parse_build_log(LOG)
    qdq = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { [add] y = Add(x, x)  [q] q = QuantizeLinear(x, x) }
    """)
    assert any("Float" not in f for f in flags(r, qdq)) or flags(r, qdq) == []
    floaty = parse_build_log([LOG[1].replace("Datatype: Half", "Datatype: Float")])
    assert any("run in Float" in f for f in flags(floaty, qdq))
    diff = compare(r, floaty)
    assert diff["a"]["layers"] == 2 and diff["b"]["layers"] == 1
    assert diff["fused_differently"] == [] and diff["only_in_a"] == []


def test_a_pad_no_layer_names_is_eliminated() -> None:
    """Swin pads each window partition by amounts computed from the shape: zero at 224x224, and
    TensorRT drops the Pad."""
    model = parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x, float[4,4] k) => (float[1,4] y) <int64[4] pads = {0, 0, 0, 0}> {
        [pad] p = Pad(x, pads)  [mm] y = MatMul(p, k)
    }
    """)
    log = [LOG[0], LOG[1].replace("[ONNX Layer: conv | fused (ConvRelu_1)][ONNX Layer: relu | fused (ConvRelu_1)]"
                                  "[ONNX Layer: add]", "[ONNX Layer: mm]")]
    acc = account(parse_build_log(log), model)
    assert (acc.in_layers, acc.eliminated, acc.unaccounted) == (1, ["pad"], [])
