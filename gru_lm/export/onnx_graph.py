"""The model as a one-step ONNX graph: (ids, state) -> (logits, next state), the loop left to the host.

One step rather than a whole sequence because a recurrent loop is what ONNX exporters of a torch model get
wrong (tracing unrolls it, the others break the graph at it); one step has no loop to export, and the host's
loop costs one call per character. The graph is written with onnx's helper API from the weights, not traced:

    ids (int64, B) ─► Gather(embedding) ─► Unsqueeze ─► GRU/LSTM/RNN layer 0 ─► ... ─► layer L-1
                                                          ▲ initial_h (c) = h0 (c0)      │ Y_h
                                                          └── next state h0_next, ...   ▼
                                                                           Squeeze ─► Gemm(head) ─► logits (B×V)

Each layer is ONNX's own recurrent operator over a sequence of length 1, so any ONNX runtime runs it with
its tuned kernel. ONNX orders the gates differently from torch: the GRU's z, r, h (torch: r, z, n), the
LSTM's i, o, f, c (torch: i, f, g, o); the rows are reordered here. The GRU's `linear_before_reset` is
the reset-after form (torch.nn.GRU's); 0 is the reset-before one (Cho et al., Dive into Deep Learning).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gru_lm.export.weights import Layer, StepWeights

#: Opset 17 (IR version 8): its GRU, LSTM and RNN are those of every later opset for float32, and runtimes
#: several years old (and onnxruntime-web) read it.
OPSET = 17
IR_VERSION = 8

#: Where each ONNX gate block comes from in torch's order.
_GATE_ORDER = {"gru": [1, 0, 2], "lstm": [0, 3, 1, 2], "rnn": [0]}
_OPERATOR = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}


def _reorder(a: np.ndarray, cell: str, H: int) -> np.ndarray:
    """Rows (or entries) of torch's gate blocks in ONNX's order."""
    return np.concatenate([a[g * H : (g + 1) * H] for g in _GATE_ORDER[cell]])


def _layer_initializers(layer: Layer, cell: str, H: int, k: int) -> list[onnx.TensorProto]:
    """W (1×G·H×I), R (1×G·H×H) and B (1×2G·H: the input biases, then the recurrent ones) of layer k."""
    w = _reorder(layer.w_ih, cell, H)[None]
    r = _reorder(layer.w_hh, cell, H)[None]
    b = np.concatenate([_reorder(layer.b_ih, cell, H), _reorder(layer.b_hh, cell, H)])[None]
    return [numpy_helper.from_array(np.ascontiguousarray(a, np.float32), f"{n}{k}") for n, a in zip("WRB", (w, r, b))]


def build_graph(weights: StepWeights) -> onnx.ModelProto:
    """The one-step graph of the model, checked by onnx's checker, with the description in its metadata."""
    cell, H, V = weights.cell, weights.hidden_size, len(weights.vocab)
    state_names = weights.state_names()
    batch = "batch"
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [batch])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, H]) for n in state_names]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, V])]
    outputs += [helper.make_tensor_value_info(f"{n}_next", TensorProto.FLOAT, [batch, H]) for n in state_names]
    inits = [
        numpy_helper.from_array(weights.embed, "embedding"),
        numpy_helper.from_array(weights.head_w, "head_weight"),
        numpy_helper.from_array(weights.head_b, "head_bias"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "ids"], ["x_embedded"], axis=0),
        helper.make_node("Unsqueeze", ["x_embedded", "axis0"], ["x_l0"]),  # a sequence of one step: 1×B×E
    ]
    x = "x_l0"
    for k, layer in enumerate(weights.layers):
        inits += _layer_initializers(layer, cell, H, k)
        states_in = []
        for part in weights.state_parts:  # the operator wants num_directions×B×H
            nodes.append(helper.make_node("Unsqueeze", [f"{part}{k}", "axis0"], [f"{part}{k}_initial"]))
            states_in.append(f"{part}{k}_initial")
        final = [f"{part}{k}_final" for part in weights.state_parts]
        attrs: dict[str, Any] = {"hidden_size": H}
        if cell == "gru":
            attrs["linear_before_reset"] = int(weights.reset_after)
        nodes.append(
            helper.make_node(
                _OPERATOR[cell],
                [x, f"W{k}", f"R{k}", f"B{k}", "", *states_in],  # "": no sequence_lens
                ["", *final],  # Y (every step's h) is not needed: Y_h is h after the one step
                name=f"layer{k}",
                **attrs,
            )
        )
        x = final[0]  # Y_h, h after the step (1×B×H), is the next layer's input
        for part, f in zip(weights.state_parts, final):
            nodes.append(helper.make_node("Squeeze", [f, "axis0"], [f"{part}{k}_next"]))
    nodes.append(
        helper.make_node("Gemm", [f"h{len(weights.layers) - 1}_next", "head_weight", "head_bias"], ["logits"], transB=1)
    )
    graph = helper.make_graph(nodes, "gru_lm_step", inputs, outputs, inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="gru-lm",
        doc_string="One step of a gru-lm character model: (ids, state) -> (logits, next state).",
    )
    model.ir_version = IR_VERSION
    meta = weights.description()
    helper.set_model_props(
        model, {key: value if isinstance(value, str) else json.dumps(value) for key, value in meta.items()}
    )
    onnx.checker.check_model(model)
    return model


def graph_bytes(weights: StepWeights) -> bytes:
    """The serialised graph, as written to a .onnx file."""
    return build_graph(weights).SerializeToString()
