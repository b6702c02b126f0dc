"""`gru-lm export`: check what was asked for, read the checkpoint, then write (nothing is written before
every check has passed)."""

from __future__ import annotations

from pathlib import Path

from gru_lm.errors import UserError
from gru_lm.export import targets, web
from gru_lm.export.weights import StepWeights, from_checkpoint


def export(ckpt: Path, onnx_file: Path | None, web_dir: Path | None, overwrite: bool) -> tuple[StepWeights, Path]:
    """Write the checkpoint's model as a one-step ONNX graph (onnx_file) or a static page (web_dir), one of the
    two; returns the weights written and where."""
    if (onnx_file is None) == (web_dir is None):
        raise UserError("give one of --onnx FILE or --web DIR")
    if onnx_file is not None:
        targets.check_file(onnx_file, ckpt, overwrite)
    else:
        assert web_dir is not None
        targets.check_folder(web_dir, web.FILES, ckpt, overwrite)
    weights = from_checkpoint(ckpt)
    if onnx_file is not None:
        from gru_lm.export.onnx_graph import graph_bytes  # onnx is imported only by the export that needs it

        targets.write(onnx_file, graph_bytes(weights))
        return weights, onnx_file
    assert web_dir is not None
    for name, data in web.folder_files(weights).items():
        targets.write(web_dir / name, data)
    return weights, web_dir
