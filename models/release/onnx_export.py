"""ONNX export of a verified bundle, with the imputation and normalisation inside the graph.

The exported graph takes one float32 matrix ``features`` of shape ``(rows, len(input_columns))``
in the *schema's* units, one column per numeric or yes/no feature and one 0/1 column per category
of a categorical feature (:func:`input_columns`); a missing value is NaN (a categorical feature
with no category set, or NaN in its columns, is missing). Inside the graph missing values are
imputed with the training statistics, numeric features standardised, missing-indicator columns
added when the study used them, and the network applied; the output is ``probability`` (yes/no),
``probabilities`` (one column per class) or ``expected_<target>`` (continuous, the target's unit).
The names of the input columns are stored in the model's metadata (``input_columns``).

Export uses torch's TorchScript-based exporter (``dynamo=False``): it needs only ``onnx``, while
the newer exporter pulls in ``onnxscript``; the graph is a few Gemm/Relu/Where nodes either way.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from medfed.models.encoding import Encoder, _codes, _numeric
from medfed.models.release.scorer import Scorer
from medfed.models.schema import TaskSchema

OPSET = 17


def input_columns(schema: TaskSchema) -> list[str]:
    """The columns of the graph's input, in order (``feature`` or ``feature=category``)."""
    names: list[str] = []
    for feat in schema.features:
        names += (
            [f"{feat.name}={c}" for c in feat.categories]
            if feat.kind == "categorical"
            else [feat.name]
        )
    return names


def onnx_inputs(frame: pd.DataFrame, schema: TaskSchema) -> np.ndarray:
    """Rows in the data conventions of :mod:`medfed.models.ingest.cards` as the graph's input
    matrix."""
    blocks = []
    for feat in schema.features:
        if feat.kind == "categorical":
            codes = _codes(frame, schema, feat)
            block = np.zeros((len(frame), len(feat.categories)), np.float32)
            block[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1.0
            blocks.append(block)
        else:
            blocks.append(_numeric(frame, schema, feat).astype(np.float32)[:, None])
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0), np.float32)


class _Preprocess(nn.Module):
    """Imputation, standardisation, one-hot defaults and missing indicators, as the Encoder."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats, parts, col = self.encoder.stats, [], 0
        for feat in self.encoder.schema.features:
            if feat.kind == "categorical":
                width = len(feat.categories)
                block = torch.nan_to_num(x[:, col : col + width], nan=0.0)
                missing = block.sum(dim=1, keepdim=True) == 0
                default = torch.zeros(width)
                default[feat.categories.index(stats.modes[feat.name])] = 1.0
                parts.append(torch.where(missing, default, block))
                missing = missing[:, 0]
            else:
                width, value = 1, x[:, col]
                missing = torch.isnan(value)
                if feat.kind == "binary":
                    filled = torch.where(missing, torch.tensor(stats.rates[feat.name]), value)
                else:
                    z = (value - stats.means[feat.name]) / stats.stds[feat.name]
                    filled = torch.where(missing, torch.tensor(0.0), z)
                parts.append(filled[:, None])
            col += width
            if self.encoder.missing_indicators and not feat.required:
                parts.append(missing.to(torch.float32)[:, None])
        return torch.cat(parts, dim=1)


class _Graph(nn.Module):
    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.pre, self.net, self.kind = (
            _Preprocess(scorer.encoder),
            scorer.model,
            scorer.schema.target.kind,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.pre(x))
        if self.kind == "binary":
            return torch.sigmoid(out)
        return torch.softmax(out, dim=1) if self.kind == "multiclass" else torch.exp(out)


def output_name(schema: TaskSchema) -> str:
    """The graph's output name (see the module docstring)."""
    kind = schema.target.kind
    return {"binary": "probability", "multiclass": "probabilities"}.get(
        kind, f"expected_{schema.target.name}"
    )


def export_onnx(scorer: Scorer, out: Path) -> Path:
    """Write the scorer's preprocessing and network as an ONNX file at ``out`` (atomically)."""
    import onnx

    graph = _Graph(scorer).eval()
    example = torch.zeros(2, len(input_columns(scorer.schema)))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            graph,
            (example,),
            buffer,  # type: ignore[arg-type]  # torch's stub names paths only; a file object works
            dynamo=False,
            opset_version=OPSET,
            input_names=["features"],
            output_names=[output_name(scorer.schema)],
            dynamic_axes={"features": {0: "rows"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(
        model,
        {
            "input_columns": json.dumps(input_columns(scorer.schema)),
            "task": scorer.schema.name,
            "bundle_signer": scorer.verified.signer,
        },
    )
    onnx.checker.check_model(model)
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(out)
    return out
