"""Which token positions of a text model's calibration batches hold real tokens, not padding.

Calibration sentences are padded to one length, often to twice their mean. A padded
position is computed like any other but nothing downstream reads it (attention masks it
out, pooling skips it), so fitting or scoring a layer on those rows spends the fit on
values that never reach the output. On all-mpnet-base-v2 (52% of positions padding) the
re-fit on real tokens only lifted the embedding cosine at 70% MACs from 0.919 to 0.929.

The mask comes from the data the user gave, never from guessing at the graph:
- an input named like ``attention_mask`` (two axes, values 0/1) says it outright;
- otherwise an integer ``[N, S]`` input whose rows end (or all begin) with a run of one
  value, the same in every row, is taken as padded with that value.

Padding is left out only when no output of the model keeps the token axis (a pooled
embedding, class scores). An output like BERT's ``last_hidden_state`` shows the padded
positions too, and whoever compares it may count them: fitted without them, all-mpnet-base-v2's
last hidden state kept cosine 0.905 at real tokens (0.897 with them) but fell to 0.851 at
padding (0.935).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

# A pad value is believed only when enough rows are padded and the value never occurs
# anywhere but in the run: a token that merely often ends a sentence ("." or "</s>") does not.
MIN_PADDED_ROWS = 0.1
PAD_SHARE_OF_RUNS = 0.75  # of the rows that end with a run of one value, how many must end with the pad


@dataclass(frozen=True)
class TokenMask:
    """How to tell real tokens from padding in a calibration batch."""

    input_name: str
    pad_value: int | None  # None: `input_name` is itself the mask (nonzero = real)
    left_padded: bool = False
    real_fraction: float = 1.0  # over the whole calibration set

    @property
    def description(self) -> str:
        share = f"{1 - self.real_fraction:.0%} of positions are padding"
        if self.pad_value is None:
            return f"{share} (input {self.input_name!r} is the attention mask)"
        side = "begin" if self.left_padded else "end"
        return f"{share} (input {self.input_name!r}: rows {side} with runs of {self.pad_value})"

    def real(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """[B, S] bool, True at the batch's real tokens."""
        values = np.asarray(batch[self.input_name])
        return values != 0 if self.pad_value is None else values != self.pad_value

    def real_rows(self, batch: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray | None:
        """Indices of the real-token rows of an activation of `shape` flattened to rows
        ([B, S, ..., K] -> [B*S*..., K]), or None when its leading axes are not the batch's [B, S]."""
        real = self.real(batch)
        if len(shape) < 3 or tuple(shape[:2]) != real.shape:
            return None
        per_token = int(np.prod(shape[2:-1], dtype=np.int64))  # rows per token (1 for [B, S, K])
        return np.flatnonzero(np.repeat(real.reshape(-1), per_token))


def padding_to_leave_out(model: onnx.ModelProto, shapes: dict, mask: TokenMask | None) -> TokenMask | None:
    """`mask` if no output of `model` keeps the token axes of its input, else None (also when a
    shape is unknown). `shapes`: concrete shapes by tensor name at the analysis input shapes, so
    exporters' names for the axes (often made up for outputs) do not matter."""
    if mask is None:
        return None
    token_axes = shapes.get(mask.input_name)
    if token_axes is None or len(token_axes) != 2:
        return None
    for output in model.graph.output:
        shape = shapes.get(output.name)
        if shape is None or (len(shape) >= 2 and tuple(shape[:2]) == tuple(token_axes)):
            return None  # unknown, or [B, S, ...]: padding may show in this output
    return mask


def find_token_mask(arrays: dict[str, np.ndarray]) -> TokenMask | None:
    """The padding of `arrays` (calibration inputs by name, all samples), or None if it has none
    that can be told from the data."""
    candidates = {name: np.asarray(value) for name, value in arrays.items()
                  if np.asarray(value).ndim == 2 and _is_integer_like(np.asarray(value))}
    for name, values in candidates.items():
        if "mask" in name.lower() and np.isin(values, (0, 1)).all() and (values != 0).any():
            return TokenMask(name, None, real_fraction=float((values != 0).mean()))
    for name, values in candidates.items():
        if np.issubdtype(values.dtype, np.floating):
            continue
        found = _pad_run(values)
        if found is not None:
            pad, left = found
            return TokenMask(name, pad, left, real_fraction=float((values != pad).mean()))
    return None


def _is_integer_like(values: np.ndarray) -> bool:
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        return True
    return np.issubdtype(values.dtype, np.floating) and bool(np.isin(values, (0, 1)).all())


def _pad_run(values: np.ndarray) -> tuple[int, bool] | None:
    """(pad value, left-padded) if every row ends (or every row begins) with a run of one value
    that occurs nowhere else, in at least MIN_PADDED_ROWS of the rows."""
    if values.shape[1] < 2 or values.shape[0] == 0:
        return None
    for left in (False, True):
        rows = values[:, ::-1] if left else values
        ends_in_run = rows[:, -1] == rows[:, -2]  # one equal last token is no evidence
        if not ends_in_run.any():
            continue
        # The commonest value ending in a run; a full row may end with a doubled letter, but
        # most runs must be of that one value.
        last, counts = np.unique(rows[ends_in_run, -1], return_counts=True)
        pad = last[counts.argmax()]
        if counts.max() < PAD_SHARE_OF_RUNS * counts.sum() or counts.max() < MIN_PADDED_ROWS * len(rows):
            continue
        is_pad = rows == pad
        # Once a row reaches the pad value it stays there: the run is the row's tail.
        if (np.diff(is_pad.astype(np.int8), axis=1) >= 0).all():
            return int(pad), left
    return None
