"""Telling real tokens from padding in text calibration data."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_slim.data.calibration import CalibrationSet, load_calibration
from onnx_slim.data.tokens import TokenMask, find_token_mask, padding_to_leave_out


def padded(lengths, seq=8, pad=1, left=False, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), seq), pad, np.int64)
    for row, length in zip(ids, lengths):
        tokens = rng.integers(5, 100, size=length)
        if left:
            row[seq - length:] = tokens
        else:
            row[:length] = tokens
    return ids


def test_an_attention_mask_input_is_the_mask():
    ids = padded([3, 8, 5])
    mask = (ids != 1).astype(np.int64)
    found = find_token_mask({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    assert found.input_name == "attention_mask" and found.pad_value is None
    assert found.real_fraction == pytest.approx(16 / 24)
    assert (found.real({"attention_mask": mask}) == (ids != 1)).all()
    assert "attention mask" in found.description


@pytest.mark.parametrize("left", [False, True])
def test_ids_padded_with_one_value_at_one_end(left):
    ids = padded([3, 8, 5, 2], pad=1, left=left)
    found = find_token_mask({"input_ids": ids})
    assert (found.input_name, found.pad_value, found.left_padded) == ("input_ids", 1, left)
    assert (found.real({"input_ids": ids}) == (ids != 1)).all()
    assert found.description.startswith("44% of positions are padding")  # 14 of 32


def test_no_padding_is_claimed_without_evidence():
    full = padded([8, 8, 8, 8])
    assert find_token_mask({"input_ids": full}) is None  # no row padded
    ends_with_a_period = full.copy()
    ends_with_a_period[:, -1] = 4  # a common last token, single: not a run
    assert find_token_mask({"input_ids": ends_with_a_period}) is None
    mixed = padded([3, 5, 2, 4], pad=1)
    mixed[1, 1] = 1  # the "pad" value inside a sentence: not a pad
    assert find_token_mask({"input_ids": mixed}) is None
    doubled = padded([3, 5, 2, 4, 6, 8, 8, 8], pad=1)
    doubled[5, -2:] = 7  # a full row ending with a doubled token is no second pad value
    assert find_token_mask({"input_ids": doubled}).pad_value == 1
    doubled[6:, 5:] = 7  # but when many rows end with runs of another value, neither is padding
    assert find_token_mask({"input_ids": doubled}) is None
    assert find_token_mask({"audio": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}) is None


def test_real_rows_of_token_shaped_activations_only():
    mask = TokenMask("ids", 0)
    batch = {"ids": np.array([[7, 8, 0], [9, 0, 0]])}
    assert mask.real_rows(batch, (2, 3, 16)).tolist() == [0, 1, 3]
    assert mask.real_rows(batch, (2, 3, 2, 16)).tolist() == [0, 1, 2, 3, 6, 7]  # [B, S, heads, K]
    assert mask.real_rows(batch, (2, 16)) is None  # pooled: one row per sample
    assert mask.real_rows(batch, (3, 2, 16)) is None  # time-major: not [B, S]


def test_calibration_sets_find_their_padding_and_images_are_never_read(tmp_path):
    ids = padded([3, 8, 5, 2])
    assert CalibrationSet({"input_ids": ids}).token_mask().pad_value == 1
    assert CalibrationSet({"input_ids": ids}, is_random=True).token_mask() is None
    images = CalibrationSet({"x": np.zeros((4, 3, 8, 8), np.float32)})
    assert images.token_mask() is None


def test_a_real_export_with_dynamic_sequence_and_its_mask(tmp_path):
    """A BERT-style file's three inputs, as users save them: the mask input wins."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph([helper.make_node("Add", ["input_ids", "attention_mask"], ["s"]),
                               helper.make_node("Add", ["s", "token_type_ids"], ["y"])], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "sequence"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    ids = padded([3, 6, 2, 6], seq=6, pad=0)
    np.savez(tmp_path / "calib.npz", input_ids=ids, attention_mask=(ids != 0).astype(np.int64),
             token_type_ids=np.zeros_like(ids))
    found = load_calibration(tmp_path / "calib.npz", tmp_path / "m.onnx").token_mask()
    assert found.input_name == "attention_mask" and found.real_fraction == pytest.approx(17 / 24)


def test_padding_is_left_out_only_when_no_output_keeps_the_token_axis():
    """Judged on the concrete shapes of the analysis, whatever the exporter named the axes."""
    from onnx import TensorProto, helper

    mask = TokenMask("input_ids", 1)

    def check(*output_shapes, input_shape=(1, 64)):
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])]
        outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(len(output_shapes))]
        model = helper.make_model(helper.make_graph([], "g", inputs, outputs))
        shapes = {"input_ids": input_shape, **{f"y{i}": shape for i, shape in enumerate(output_shapes)}}
        return padding_to_leave_out(model, shapes, mask)

    assert check((1, 768)) is mask  # a pooled embedding
    assert check((1, 768), (1, 2)) is mask
    assert check((1, 64, 384)) is None  # last_hidden_state
    assert check((1, 768), (1, 64, 384)) is None
    assert check((1, 64)) is None  # one score per token
    assert check((4, 128, 384), input_shape=(4, 128)) is None
    assert check(None) is None  # unknown: cannot tell
    assert padding_to_leave_out(helper.make_model(helper.make_graph([], "g", [], [])), {}, mask) is None
    assert check((1, 768)) is mask and padding_to_leave_out(None, {}, None) is None
