"""Intermediate tensors captured with onnxruntime, batch by batch.

`ActivationCapture` runs a copy of the model whose outputs include the requested
intermediate tensors.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnx_slim.errors import OnnxSlimError
from onnx_slim.ir.graph import add_graph_outputs
from onnx_slim.ir.inputs import graph_inputs
from onnx_slim.ir.model import load_model
from onnx_slim.ir.progress import Reporter, counted
from onnx_slim.ir.runtime import SessionSpec, create_session, run_session

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- capture


class ActivationCapture:
    """Run a model and return its outputs plus the requested intermediate tensors.

    The caller's model is not modified: a copy gets the extra graph outputs. Tensors
    that are graph outputs survive onnxruntime's fusions, so they are safe to ask for.
    """

    def __init__(self, model: onnx.ModelProto, tensor_names: Sequence[str], *,
                 session: SessionSpec = SessionSpec()):
        self.tensor_names = list(dict.fromkeys(tensor_names))
        capture_model = load_model(model)  # a copy
        _check_capturable(capture_model, self.tensor_names)
        self.input_names = [spec.name for spec in graph_inputs(capture_model)]
        self.output_names = [output.name for output in capture_model.graph.output]
        # Graph inputs are echoed from the feeds: no need to route them through the session.
        self._echoed = [name for name in self.tensor_names if name in self.input_names]
        extra = [name for name in self.tensor_names if name not in self.input_names and name not in self.output_names]
        add_graph_outputs(capture_model, extra, element_types(capture_model, extra))
        self.session = create_session(capture_model, session)

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model outputs and requested tensors, by name, for one batch of feeds."""
        results = run_session(self.session, batch)
        for name in self._echoed:
            results[name] = np.asarray(batch[name])
        return results

    def iter(
        self, batches: Iterable[Mapping[str, np.ndarray]], progress: Reporter | None = None,
        label: str = "calibration batches",
    ) -> Iterator[dict[str, np.ndarray]]:
        """`run` over a stream of batches, one result at a time; `progress` counts them when
        `batches` has a length (a list, `CalibrationSet.batch_stream`)."""
        for batch in counted(progress, label, batches):
            yield self.run(batch)


def _check_capturable(model: onnx.ModelProto, names: Sequence[str]) -> None:
    graph = model.graph
    produced = {output for node in graph.node for output in node.output if output}
    produced |= {value.name for value in graph.input}
    constants = {init.name for init in graph.initializer}
    for name in names:
        if name in constants:
            raise OnnxSlimError(
                f"tensor '{name}' is a constant (initializer), not an activation; read it from the model"
            )
        if name not in produced:
            raise OnnxSlimError(
                f"tensor '{name}' is not in the model's main graph (no node produces it); "
                f"check the name with onnx.load(...).graph.node"
            )


def element_types(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """Element type of each named tensor: from the model's own value infos, else shape inference."""
    known = _declared_types(model.graph)
    if all(name in known for name in names):
        return known
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # custom ops, >2 GiB models: fall back to untyped outputs
        logger.debug("shape inference failed: %s", exc)
        return known
    return {**_declared_types(inferred.graph), **known}


def _declared_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        elem_type = value.type.tensor_type.elem_type
        if elem_type:
            types[value.name] = elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types
