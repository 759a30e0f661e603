"""Calibration for static quantization: the data stream fed to onnxruntime, and the activation ranges.

`calibrate` drives onnxruntime's calibrator itself and saves the ranges as an
onnxruntime calibration cache, which `quantize_static` then reads instead of
calibrating again. Driving it ourselves is what makes every sample count:
onnxruntime 1.32's MinMax calibrator, given `CalibMaxIntermediateOutputs=N`,
clears each full chunk of N batches without merging it into the ranges, so only
the last (batches mod N) batches counted, and a batch count that is a multiple
of N left no data at all ("No data is collected").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from onnx_slim.errors import UsageError
from onnx_slim.ir.inputs import InputSpec, MadeUpInputs, fixed_batch_size, graph_inputs, leading_dim, with_values

logger = logging.getLogger(__name__)

RANDOM = "random"  # the `calibration` value that asks for structure-only random data
RANDOM_CALIBRATION = "random (structure-only, NOT for deployment)"
RANDOM_CALIBRATION_WARNING = (
    "calibrated on random data (structure-only): the activation ranges say nothing about real inputs, "
    "so this model is a smoke test, NOT for deployment; give real calibration data"
)
RANDOM_CALIBRATION_SAMPLES = 16
# MinMax ranges are folded into the running ranges every this many batches, so
# calibration memory does not grow with the data set.
MINMAX_BATCHES_PER_MERGE = 8
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# The op types quantize_static calibrates when not told which (onnxruntime 1.32's default).
_CALIBRATED_OP_TYPES = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def calibration_reader(model: onnx.ModelProto, calibration, batch_size: int,
                       inputs: MadeUpInputs = MadeUpInputs()) -> LazyCalibrationReader:
    """A reader over `calibration` (feed dicts, or RANDOM, made up as `inputs` says) re-batched to the
    model's fixed batch or `batch_size`; an input `inputs.values` fixes is filled again at that batch."""
    specs = graph_inputs(model)
    fixed = fixed_batch_size(specs, inputs.values)
    size = fixed or batch_size
    source = _random_samples(model, inputs) if calibration == RANDOM else calibration
    return LazyCalibrationReader(rebatched(source, specs, size, exact=fixed is not None, inputs=inputs), size)


def calibrate(model_path: Path, reader: LazyCalibrationReader, method: str, cache_path: Path) -> None:
    """Activation ranges over every batch of `reader`, saved to `cache_path` (onnxruntime's calibration cache).

    MinMax takes the data in chunks, one `collect_data` call each, which merges
    the chunk into the running ranges (min of minimums, max of maximums): the
    same ranges as one pass over all samples, in bounded memory. Entropy and
    percentile take one pass: merging their histograms chunk by chunk would
    re-bin them and change the result.
    """
    calibrator = create_calibrator(
        model_path, _CALIBRATED_OP_TYPES, augmented_model_path=str(cache_path.with_name("augmented.onnx")),
        calibrate_method=CALIBRATION_METHODS[method],
    )
    try:
        if method == "minmax":
            while not reader.exhausted:
                calibrator.collect_data(_Chunk(reader, MINMAX_BATCHES_PER_MERGE))
        else:
            calibrator.collect_data(reader)
    except ValueError:
        if reader.was_empty():  # onnxruntime's "No data is collected."
            raise UsageError("the calibration data is empty: give at least one batch") from None
        raise
    save_tensors_data(calibrator.compute_data(), cache_path)


class LazyCalibrationReader(CalibrationDataReader):
    """Hands onnxruntime's calibrator one batch at a time, pulled from an iterator; counts what it handed out."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], batch_size: int) -> None:
        self._batches = batches
        self.batch_size = batch_size
        self.samples = 0
        self.batches_read = 0
        self.exhausted = False
        self.first_batch: dict[str, np.ndarray] | None = None  # kept to time the models on real inputs

    def get_next(self) -> dict[str, np.ndarray] | None:
        feeds = next(self._batches, None)
        if feeds is None:
            self.exhausted = True
            return None
        if self.first_batch is None:
            self.first_batch = feeds
        self.batches_read += 1
        self.samples += leading_dim(feeds)
        return feeds

    def was_empty(self) -> bool:
        return self.exhausted and self.samples == 0

    def describe(self) -> str:
        return f"{self.samples} samples in {self.batches_read} batches of up to {self.batch_size}"


class _Chunk(CalibrationDataReader):
    """At most `limit` batches of a reader, then the end: one MinMax `collect_data` call's worth."""

    def __init__(self, reader: LazyCalibrationReader, limit: int) -> None:
        self._reader = reader
        self._left = limit

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._left == 0:
            return None
        self._left -= 1
        return self._reader.get_next()


def _random_samples(model: onnx.ModelProto, inputs: MadeUpInputs) -> Iterator[dict[str, np.ndarray]]:
    for seed in range(RANDOM_CALIBRATION_SAMPLES):
        yield inputs.feeds(model, seed=seed)


def rebatched(
    batches: Iterable[Mapping[str, np.ndarray]],
    specs: Sequence[InputSpec],
    size: int,
    *,
    exact: bool = True,
    inputs: MadeUpInputs = MadeUpInputs(),
) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts with the model's inputs only, cast to its dtypes, `size` samples each.

    Holds at most one incoming batch plus one outgoing. With `exact`, a final short batch is dropped (the model takes
    only `size`), otherwise it is yielded. Inputs fixed by `inputs.values` have no samples to split
    (a scalar, a state [2, batch, 128]): they are filled again at each outgoing batch.
    """
    values = inputs.values or {}
    sampled = [spec for spec in specs if spec.name not in values]

    def filled(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return with_values(feeds, specs, values, inputs.shapes)

    pending: list[dict[str, np.ndarray]] = []
    pending_samples = 0
    for batch in batches:
        feeds = _model_feeds(batch, sampled)
        pending.append(feeds)
        pending_samples += leading_dim(feeds)
        while pending_samples >= size:
            merged = _concatenate(pending)
            yield filled({name: array[:size] for name, array in merged.items()})
            rest = {name: array[size:] for name, array in merged.items()}
            pending_samples -= size
            pending = [rest] if pending_samples else []
    if pending_samples and not exact:
        yield filled(_concatenate(pending))
    elif pending_samples:
        logger.warning("dropped the last %d calibration samples: the model takes batches of %d", pending_samples, size)


def _model_feeds(batch: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    missing = [spec.name for spec in specs if spec.name not in batch]
    if missing:
        raise UsageError(f"a calibration batch lacks model inputs {missing} (it has {sorted(batch)})")
    return {spec.name: np.asarray(batch[spec.name]).astype(spec.dtype, copy=False) for spec in specs}


def _concatenate(feeds_list: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds_list) == 1:
        return feeds_list[0]
    return {name: np.concatenate([feeds[name] for feeds in feeds_list]) for name in feeds_list[0]}
