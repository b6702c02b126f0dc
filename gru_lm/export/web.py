"""`gru-lm export --web DIR`: a static folder that generates text in the browser, with no server of ours.

    index.html   the page: prime, length, temperature, top-p, seed; streams the continuation into #output
    gru-lm.js    the runtime: one step of the model over its weights and the draw (web_runtime.js), no dependency
    model.js     the weights (float32, base64) and the description, as a script: so file:// works too
    vocab.json   the characters in id order, for other tools

Any static file server or hosting serves the folder as it is.
"""

from __future__ import annotations

import base64
import json
from importlib import resources

import numpy as np

from gru_lm.export.weights import StepWeights

FILES = ["index.html", "gru-lm.js", "model.js", "vocab.json"]


def page_tensors(weights: StepWeights) -> dict[str, np.ndarray]:
    """The tensors the page's step reads, in torch's layout (rows are the gates r, z, n / i, f, g, o):
    the first layer's input projection folded into a table (V × G·H: embed(c) W_ih + b_ih for every
    character c), each layer's recurrent weights, the later layers' input weights, the read-out."""
    first = weights.layers[0]
    table = weights.embed.astype(np.float64) @ first.w_ih.T.astype(np.float64) + first.b_ih
    tensors = {"table": table.astype(np.float32)}
    for k, layer in enumerate(weights.layers):
        if k > 0:
            tensors[f"w_ih{k}"], tensors[f"b_ih{k}"] = layer.w_ih, layer.b_ih
        tensors[f"w_hh{k}"], tensors[f"b_hh{k}"] = layer.w_hh, layer.b_hh
    tensors["head_w"], tensors["head_b"] = weights.head_w, weights.head_b
    return tensors


def model_js(weights: StepWeights) -> str:
    """model.js: globalThis.GRU_LM_MODEL = {meta, tensors: {name: {offset, shape}}, data: base64 of float32 LE}."""
    index, parts, offset = {}, [], 0
    for name, t in page_tensors(weights).items():
        index[name] = {"offset": offset, "shape": list(t.shape)}
        parts.append(np.ascontiguousarray(t, dtype="<f4").tobytes())
        offset += t.size
    spec = {"meta": weights.description(), "tensors": index}
    data = base64.b64encode(b"".join(parts)).decode("ascii")
    head = json.dumps(spec, ensure_ascii=True)[:-1]  # the description without its closing brace, data after it
    return (
        "// A gru-lm model for gru-lm.js, written by `gru-lm export --web`: its description, then its weights.\n"
        f'globalThis.GRU_LM_MODEL = {head}, "data": "{data}"}};\n'
    )


def folder_files(weights: StepWeights) -> dict[str, bytes]:
    """Every file of the folder, by name."""
    package = resources.files("gru_lm.export")
    return {
        "index.html": package.joinpath("web_page.html").read_bytes(),
        "gru-lm.js": package.joinpath("web_runtime.js").read_bytes(),
        "model.js": model_js(weights).encode("ascii"),
        "vocab.json": json.dumps(list(weights.vocab), ensure_ascii=False).encode("utf-8") + b"\n",
    }
