"""Calibration sources (npz, npy folder, image folder, random), validation, batching."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_slim.data import images as images_module
from onnx_slim.data import samples as samples_module
from onnx_slim.data.calibration import CalibrationSet, load_calibration
from onnx_slim.errors import OnnxSlimError, UsageError
from onnx_slim.ir.runtime import create_session, run_session


def make_model(inputs: dict[str, tuple[int, list]]) -> onnx.ModelProto:
    """A model with the given inputs (name -> (elem_type, dims)), each passed through Identity."""
    value_infos, nodes, outputs = [], [], []
    for name, (elem_type, dims) in inputs.items():
        value_infos.append(helper.make_tensor_value_info(name, elem_type, dims))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", elem_type, dims))
    graph = helper.make_graph(nodes, "test", value_infos, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def image_model(dims=("N", 3, 8, 8), elem_type=TensorProto.FLOAT) -> onnx.ModelProto:
    return make_model({"input": (elem_type, list(dims))})


def two_input_model() -> onnx.ModelProto:
    return make_model({"a": (TensorProto.FLOAT, ["N", 3]), "b": (TensorProto.FLOAT, ["N", 3])})


def rng_array(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- npz


def test_npz_matching_name_with_labels(tmp_path):
    data = rng_array(10, 3, 8, 8, dtype=np.float64)
    labels = np.arange(10) % 3
    path = tmp_path / "calib.npz"
    np.savez(path, input=data, labels=labels)

    calib = load_calibration(path, image_model())

    assert len(calib) == 10
    assert calib.input_names == ["input"]
    assert calib.arrays["input"].dtype == np.float32  # float64 cast silently
    np.testing.assert_allclose(calib.arrays["input"], data.astype(np.float32))
    np.testing.assert_array_equal(calib.labels, labels)
    assert calib.is_random is False
    assert calib.description == "calib.npz: 10 samples"


def test_npz_single_key_of_any_name_for_one_input_model(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, images=rng_array(4, 3, 8, 8))
    calib = load_calibration(path, image_model())
    assert calib.input_names == ["input"] and len(calib) == 4


def test_npz_two_inputs(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=rng_array(5, 3), b=rng_array(5, 3, seed=1))
    calib = load_calibration(path, two_input_model())
    assert calib.input_names == ["a", "b"]
    np.testing.assert_array_equal(calib.arrays["b"], rng_array(5, 3, seed=1))


def test_npz_missing_input_lists_expected(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=rng_array(5, 3))
    with pytest.raises(OnnxSlimError, match=r"two\.npz: missing 'b'; expected keys 'a', 'b'"):
        load_calibration(path, two_input_model())


def test_npz_unknown_key_is_named(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=rng_array(5, 3), b=rng_array(5, 3), c=rng_array(5, 3))
    with pytest.raises(OnnxSlimError, match=r"unknown 'c'; expected keys 'a', 'b'"):
        load_calibration(path, two_input_model())


def test_npz_channels_last_data_gets_a_layout_hint(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=rng_array(10, 8, 8, 3))
    with pytest.raises(OnnxSlimError) as error:
        load_calibration(path, image_model())
    message = str(error.value)
    assert "calib.npz: input 'input': expected shape [N,3,8,8], got [10,8,8,3]" in message
    assert "--layout" in message and "\n" not in message


def test_npz_static_dim_mismatch(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=rng_array(2, 3, 8, 9))
    with pytest.raises(OnnxSlimError, match=r"expected shape \[N,3,8,8\], got \[2,3,8,9\]"):
        load_calibration(path, image_model())


def test_npz_wrong_rank(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=rng_array(2, 3, 8))
    with pytest.raises(OnnxSlimError, match=r"expected shape \[N,3,8,8\], got \[2,3,8\]"):
        load_calibration(path, image_model())


def test_symbolic_dims_accept_any_size(tmp_path):
    model = make_model({"ids": (TensorProto.INT64, ["batch", "seq"])})
    path = tmp_path / "ids.npz"
    np.savez(path, ids=np.arange(12, dtype=np.int32).reshape(3, 4))
    calib = load_calibration(path, model)
    assert calib.arrays["ids"].dtype == np.int64 and calib.arrays["ids"].shape == (3, 4)


def test_float_data_for_int_input_is_refused(tmp_path):
    model = make_model({"ids": (TensorProto.INT64, ["batch", "seq"])})
    path = tmp_path / "ids.npz"
    np.savez(path, ids=np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(OnnxSlimError, match=r"ids\.npz: input 'ids': data is float32 but the model expects int64"):
        load_calibration(path, model)


def test_different_sample_counts(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=rng_array(5, 3), b=rng_array(6, 3))
    with pytest.raises(OnnxSlimError, match=r"two\.npz: inputs have different sample counts \('a': 5, 'b': 6\)"):
        load_calibration(path, two_input_model())


def test_empty_set(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(OnnxSlimError, match=r"calib\.npz: no samples"):
        load_calibration(path, image_model())


def test_missing_path(tmp_path):
    with pytest.raises(OnnxSlimError, match=r"nope\.npz: no such file or directory; give an \.npz"):
        load_calibration(tmp_path / "nope.npz", image_model())


def test_unreadable_npz(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(OnnxSlimError, match=r"broken\.npz: cannot read it as \.npz"):
        load_calibration(path, image_model())


def test_npy_named_npz_is_refused(tmp_path):
    path = tmp_path / "single.npz"
    with open(path, "wb") as handle:
        np.save(handle, rng_array(2, 3, 8, 8))
    with pytest.raises(OnnxSlimError, match=r"single\.npz: is a single \.npy array, not an \.npz archive"):
        load_calibration(path, image_model())


def test_unsupported_file_kind(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(OnnxSlimError, match=r"data\.csv: unsupported calibration file"):
        load_calibration(path, image_model())


def test_labels_must_match_sample_count(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=rng_array(4, 3, 8, 8), labels=np.arange(3))
    with pytest.raises(OnnxSlimError, match=r"'labels' has 3 entries but the inputs have 4 samples"):
        load_calibration(path, image_model())


def test_labels_must_be_integers(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=rng_array(4, 3, 8, 8), labels=np.zeros(4, np.float32))
    with pytest.raises(OnnxSlimError, match=r"'labels' must be integer class ids of shape \[N\]"):
        load_calibration(path, image_model())


def test_samples_keeps_the_first_n(tmp_path):
    data = rng_array(10, 3, 8, 8)
    path = tmp_path / "calib.npz"
    np.savez(path, input=data, labels=np.arange(10))
    calib = load_calibration(path, image_model(), samples=4)
    assert len(calib) == 4
    np.testing.assert_array_equal(calib.arrays["input"], data[:4])
    np.testing.assert_array_equal(calib.labels, [0, 1, 2, 3])
    assert len(load_calibration(path, image_model(), samples=100)) == 10


def test_npz_single_key_of_another_name_says_which_input_it_fed(tmp_path, caplog):
    path = tmp_path / "calib.npz"
    np.savez(path, images=rng_array(4, 3, 8, 8))
    calib = load_calibration(path, image_model())
    assert calib.description == "calib.npz (key 'images' -> input 'input'): 4 samples"
    assert "key 'images' -> input 'input'" in caplog.text


def test_uncompressed_npz_is_memory_mapped_not_read(tmp_path):
    data = rng_array(6, 3, 8, 8)
    path = tmp_path / "calib.npz"
    np.savez(path, input=data, labels=np.arange(6))
    calib = load_calibration(path, image_model())
    assert isinstance(calib._sources["input"].data, np.memmap)
    np.testing.assert_array_equal(calib.arrays["input"], data)
    np.testing.assert_array_equal(calib.labels, np.arange(6))


def test_compressed_npz_reads_only_what_the_model_needs(tmp_path, monkeypatch):
    """Names and shapes come from the members' headers: a bad key or shape is refused before any
    array is decompressed, and a good archive decompresses only its inputs and labels."""
    read = []
    original = np.lib.format.read_array

    def spying_read_array(handle, *args, **kwargs):
        read.append(handle.name)
        return original(handle, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "read_array", spying_read_array)
    path = tmp_path / "calib.npz"
    np.savez_compressed(path, input=rng_array(4, 3, 8, 8), labels=np.arange(4), unused=np.zeros((1000, 1000)))
    with pytest.raises(OnnxSlimError, match=r"unknown 'unused'"):
        load_calibration(path, image_model())
    assert read == []
    np.savez_compressed(path, input=rng_array(4, 3, 8, 9))
    with pytest.raises(OnnxSlimError, match=r"expected shape \[N,3,8,8\], got \[4,3,8,9\]"):
        load_calibration(path, image_model())
    assert read == []
    np.savez_compressed(path, input=rng_array(4, 3, 8, 8), labels=np.arange(4))
    calib = load_calibration(path, image_model())
    assert sorted(read) == ["input.npy", "labels.npy"]
    np.testing.assert_array_equal(calib.arrays["input"], rng_array(4, 3, 8, 8))


def test_huge_unused_npz_key_is_never_decompressed(tmp_path):
    """A small compressed .npz with a 128 MB key of zeros: refused without the memory growing."""
    path = tmp_path / "bomb.npz"
    elements = 32 * 2**20
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("input.npy", "w") as handle:
            np.lib.format.write_array(handle, rng_array(4, 3, 8, 8))
        with archive.open("unused.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array_header_2_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (elements,)})
            chunk = bytes(1 << 22)
            for _ in range(elements * 4 // len(chunk)):
                handle.write(chunk)
    assert path.stat().st_size < 1_000_000
    script = textwrap.dedent(f"""
        import resource
        from onnx import TensorProto, helper
        from onnx_slim.data.calibration import load_calibration
        value = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
        out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 8, 8])
        model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "g", [value], [out]))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_calibration({str(path)!r}, model)
        except Exception as error:
            print(error)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    message, growth_mb = result.stdout.strip().splitlines()
    assert "unknown 'unused'" in message
    assert int(growth_mb) < 32, result.stdout


def test_npz_with_object_array_is_refused(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=np.array([None, 1], dtype=object))
    with pytest.raises(OnnxSlimError, match=r"calib\.npz: 'input\.npy' holds Python objects"):
        load_calibration(path, image_model())


# --------------------------------------------------------------------------- NaN and infinity


def test_npz_with_nan_and_inf_gives_the_count_and_the_first_position(tmp_path):
    data = rng_array(6, 3, 8, 8)
    data[2, 0, 4, 5] = np.nan
    data[5, 1, 0, 0] = -np.inf
    path = tmp_path / "calib.npz"
    np.savez_compressed(path, input=data)
    with pytest.raises(OnnxSlimError) as error:
        load_calibration(path, image_model())
    assert str(error.value) == (
        f"{path}: input 'input' holds 2 NaN or infinite values, the first at sample 2, index [2, 0, 4, 5]; "
        "fix or drop those samples"
    )


def test_nan_is_found_across_scan_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(samples_module, "_FINITE_CHECK_ELEMENTS", 3 * 8 * 8)  # one sample per slice
    data = rng_array(5, 3, 8, 8)
    data[3, 2, 7, 7] = np.inf
    path = tmp_path / "calib.npz"
    np.savez(path, input=data)
    with pytest.raises(OnnxSlimError, match=r"holds 1 NaN or infinite value, the first at sample 3, index \[3, 2, 7, 7\]"):
        load_calibration(path, image_model())


def test_npy_files_with_nan_name_the_file_and_the_sample(tmp_path):
    np.save(tmp_path / "part_a.npy", rng_array(2, 3, 8, 8))
    bad = rng_array(3, 8, 8)
    bad[1, 2, 3] = np.nan
    np.save(tmp_path / "part_b.npy", bad)  # one sample: the third of the set
    with pytest.raises(OnnxSlimError, match=r"part_b\.npy: input 'input' holds 1 NaN .* at sample 2, index \[2, 1, 2, 3\]"):
        load_calibration(tmp_path, image_model())
    (tmp_path / "part_a.npy").unlink()
    (tmp_path / "part_b.npy").unlink()
    np.save(tmp_path / "a.npy", np.full((2, 3), np.inf, np.float32))
    np.save(tmp_path / "b.npy", rng_array(2, 3))
    with pytest.raises(OnnxSlimError, match=r"a\.npy: input 'a' holds 6 NaN or infinite values, the first at sample 0"):
        load_calibration(tmp_path, two_input_model())


def test_calibration_set_and_evaluation_feeds_refuse_nan(tmp_path):
    from onnx_slim.data.evaluate import evaluate

    data = rng_array(4, 3)
    data[1, 2] = np.nan
    with pytest.raises(OnnxSlimError, match=r"input 'x' holds 1 NaN or infinite value, the first at sample 1"):
        CalibrationSet({"x": data})
    model = make_model({"x": (TensorProto.FLOAT, ["N", 3])})
    feeds = [{"x": rng_array(2, 3)}, {"x": data}]
    with pytest.raises(OnnxSlimError, match=r"evaluation data: input 'x' holds 1 NaN .* at sample 3, index \[3, 2\]"):
        evaluate(model, model, feeds)


# --------------------------------------------------------------------------- npy folder


def test_npy_folder_one_file_per_input(tmp_path):
    np.save(tmp_path / "a.npy", rng_array(5, 3, dtype=np.float64))
    np.save(tmp_path / "b.npy", rng_array(5, 3, seed=2))
    np.save(tmp_path / "labels.npy", np.arange(5))
    calib = load_calibration(tmp_path, two_input_model())
    assert calib.input_names == ["a", "b"] and len(calib) == 5
    assert calib.arrays["a"].dtype == np.float32
    np.testing.assert_array_equal(calib.arrays["b"], rng_array(5, 3, seed=2))
    np.testing.assert_array_equal(calib.labels, np.arange(5))


def test_npy_folder_missing_input_file(tmp_path):
    np.save(tmp_path / "a.npy", rng_array(5, 3))
    with pytest.raises(OnnxSlimError, match=r"missing 'b\.npy'; expected files 'a\.npy', 'b\.npy'"):
        load_calibration(tmp_path, two_input_model())


def test_npy_folder_of_samples_and_batches_concatenated_in_name_order(tmp_path):
    batch = rng_array(2, 3, 8, 8, seed=1)
    single = rng_array(3, 8, 8, seed=2)
    np.save(tmp_path / "part_b.npy", single)  # one sample: no sample axis
    np.save(tmp_path / "part_a.npy", batch)
    calib = load_calibration(tmp_path, image_model())
    assert len(calib) == 3
    np.testing.assert_array_equal(calib.arrays["input"], np.concatenate([batch, single[None]]))


def test_npy_folder_bad_file_is_named(tmp_path):
    np.save(tmp_path / "s1.npy", rng_array(3, 8, 8))
    np.save(tmp_path / "s2.npy", rng_array(3, 8, 7))
    expected = r"s2\.npy: input 'input': expected shape \[N,3,8,8\], got \[3,8,7\] \(one sample\)"
    with pytest.raises(OnnxSlimError, match=expected):
        load_calibration(tmp_path, image_model())


def test_folder_without_data(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(OnnxSlimError, match=r"no \.npy or image"):
        load_calibration(tmp_path, image_model())


def test_folder_with_npy_and_images_is_ambiguous(tmp_path):
    np.save(tmp_path / "s1.npy", rng_array(3, 8, 8))
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(OnnxSlimError, match=r"holds both \.npy and image files"):
        load_calibration(tmp_path, image_model())


# --------------------------------------------------------------------------- images


def write_image(path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8)).save(path)


def solid_image(height, width, color) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.uint8), (height, width, 3)).copy()


def test_image_folder_rgb_nchw_with_normalization(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "0.png", solid_image(8, 8, (255, 0, 51)))
    write_image(tmp_path / "1.bmp", solid_image(8, 8, (0, 255, 102)))
    calib = load_calibration(tmp_path, image_model(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    images = calib.arrays["input"]
    assert images.shape == (2, 3, 8, 8) and images.dtype == np.float32
    np.testing.assert_allclose(images[0, :, 0, 0], [1.0, -2.0, -0.6], atol=1e-6)
    np.testing.assert_allclose(images[1, :, 4, 4], [-1.0, 2.0, -0.2], atol=1e-6)
    assert "2 samples" in calib.description and "8x8" in calib.description


def test_image_folder_bgr_order(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "0.png", solid_image(8, 8, (255, 0, 51)))
    calib = load_calibration(tmp_path, image_model(), channel_order="bgr")
    np.testing.assert_allclose(calib.arrays["input"][0, :, 0, 0], [0.2, 0.0, 1.0], atol=1e-6)


def test_image_folder_nhwc(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "0.png", solid_image(8, 8, (255, 0, 51)))
    calib = load_calibration(tmp_path, image_model(("N", 8, 8, 3)), layout="nhwc")
    images = calib.arrays["input"]
    assert images.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(images[0, 3, 3], [1.0, 0.0, 0.2], atol=1e-6)


def test_image_folder_grayscale_and_resize(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "big.png", solid_image(20, 30, (200, 200, 200)))
    calib = load_calibration(tmp_path, image_model(("N", 1, 6, 5)))
    images = calib.arrays["input"]
    assert images.shape == (1, 1, 6, 5)
    np.testing.assert_allclose(images, 200 / 255, atol=1e-6)


def test_image_folder_uint8_input_gets_raw_pixels(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "0.png", solid_image(8, 8, (255, 0, 51)))
    calib = load_calibration(tmp_path, image_model(elem_type=TensorProto.UINT8))
    assert calib.arrays["input"].dtype == np.uint8
    np.testing.assert_array_equal(calib.arrays["input"][0, :, 0, 0], [255, 0, 51])
    with pytest.raises(UsageError, match=r"raw 0\.\.255 pixels, so mean/std do not apply"):
        load_calibration(tmp_path, image_model(elem_type=TensorProto.UINT8), mean=(0.5, 0.5, 0.5))


def test_image_folder_symbolic_size_needs_input_size(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "0.jpg", solid_image(10, 12, (10, 20, 30)))
    model = image_model(("N", 3, "height", "width"))
    expected = r"input 'input' has no fixed height/width \(\[N,3,height,width\]\); pass --input-size H,W"
    with pytest.raises(UsageError, match=expected):
        load_calibration(tmp_path, model)
    calib = load_calibration(tmp_path, model, input_size=(4, 6))
    assert calib.arrays["input"].shape == (1, 3, 4, 6)


def test_image_folder_input_size_must_match_static_dims(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "0.png", solid_image(8, 8, (0, 0, 0)))
    with pytest.raises(OnnxSlimError, match=r"has a fixed height of 8 .* but input_size asks for 16x16"):
        load_calibration(tmp_path, image_model(), input_size=16)


def test_image_folder_layout_mismatch_suggests_layout(tmp_path):
    (tmp_path / "0.png").write_bytes(b"not an image: the layout is checked first")
    expected = r"with layout nhwc that is 8 channels, but images have 1 or 3; use --layout nchw"
    with pytest.raises(OnnxSlimError, match=expected):
        load_calibration(tmp_path, image_model(), layout="nhwc")


def test_image_folder_needs_one_image_input(tmp_path):
    (tmp_path / "0.png").write_bytes(b"")
    with pytest.raises(OnnxSlimError, match=r"feeds one image input, but the model has 2 \(a, b\); use an \.npz"):
        load_calibration(tmp_path, two_input_model())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mean": (0.5, 0.5)}, r"mean has 2 values but the image input has 3 channels"),
        ({"std": (0.5, 0.0, 0.5)}, r"std values must be positive"),
        ({"input_size": (8, 8, 8)}, r"input_size must be \(height, width\)"),
    ],
)
def test_image_option_errors(tmp_path, options, message):
    (tmp_path / "0.png").write_bytes(b"")
    with pytest.raises(UsageError, match=message):
        load_calibration(tmp_path, image_model(), **options)


def test_unreadable_image_is_named_before_any_work(tmp_path):
    pytest.importorskip("PIL")
    write_image(tmp_path / "0.png", solid_image(8, 8, (0, 0, 0)))
    (tmp_path / "1.png").write_text("this is not a png")
    with pytest.raises(OnnxSlimError, match=r"1\.png: not a readable image"):
        load_calibration(tmp_path, image_model())


def test_missing_pillow_message(tmp_path, monkeypatch):
    (tmp_path / "0.png").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL` fail
    with pytest.raises(OnnxSlimError) as error:
        load_calibration(tmp_path, image_model())
    assert str(error.value) == "reading an image directory needs Pillow: pip install 'onnx-slim[images]'"


def test_image_folder_decodes_lazily_per_batch(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    for index in range(10):
        write_image(tmp_path / f"img_{index:02d}.png", solid_image(8, 8, (index * 20, 0, 0)))
    decoded = []
    original = images_module._read_pixels

    def counting_read_pixels(path, *args):
        decoded.append(path.name)
        return original(path, *args)

    monkeypatch.setattr(images_module, "_read_pixels", counting_read_pixels)
    calib = load_calibration(tmp_path, image_model(), samples=7)
    assert decoded == []  # loading only checks headers

    batches = calib.batches(3)
    first = next(batches)
    assert decoded == ["img_00.png", "img_01.png", "img_02.png"]
    np.testing.assert_allclose(first["input"][:, 0, 0, 0], [0, 20 / 255, 40 / 255], atol=1e-6)
    sizes = [len(first["input"])] + [len(batch["input"]) for batch in batches]
    assert sizes == [3, 3, 1]
    assert len(decoded) == 7  # each image decoded once, the 3 beyond `samples` never


# --------------------------------------------------------------------------- random


def test_random_source_shapes_and_flags():
    model = make_model({
        "pixels": (TensorProto.FLOAT, ["batch", 3, "h", "w"]),
        "ids": (TensorProto.INT64, ["batch", "seq"]),
    })
    calib = load_calibration("random", model)
    assert len(calib) == 16 and calib.is_random
    assert calib.arrays["pixels"].shape == (16, 3, 64, 64) and calib.arrays["pixels"].dtype == np.float32
    assert calib.arrays["ids"].dtype == np.int64 and set(np.unique(calib.arrays["ids"])) <= {0, 1}
    assert calib.description == "random: 16 samples (random, structure-only)"
    again = load_calibration("random", model, samples=4)
    np.testing.assert_array_equal(again.arrays["ids"], load_calibration("random", model, samples=4).arrays["ids"])
    assert len(again) == 4
    other_seed = load_calibration("random", model, samples=4, seed=1)
    assert not np.array_equal(again.arrays["pixels"], other_seed.arrays["pixels"])


def test_random_source_with_fixed_batch_model():
    calib = load_calibration("random", image_model((1, 3, 8, 8)), samples=3)
    assert calib.arrays["input"].shape == (3, 3, 8, 8)
    assert [len(batch["input"]) for batch in calib.batches(8)] == [1, 1, 1]


# --------------------------------------------------------------------------- the set


def test_batches_cover_everything_in_order_and_run_in_onnxruntime(tmp_path):
    data = rng_array(10, 3, 8, 8)
    path = tmp_path / "calib.npz"
    np.savez(path, input=data.astype(np.float64))
    model = image_model()
    calib = load_calibration(path, model)
    batches = list(calib.batches(4))
    assert [len(batch["input"]) for batch in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([batch["input"] for batch in batches]), data)
    session = create_session(model)
    outputs = [run_session(session, batch)["input_out"] for batch in batches]
    np.testing.assert_array_equal(np.concatenate(outputs), data)


def test_batches_are_copies():
    calib = CalibrationSet({"x": np.zeros((4, 2), np.float32)})
    batch = next(calib.batches(4))
    batch["x"][:] = 1
    assert calib.arrays["x"].sum() == 0


def test_split_and_take():
    data = rng_array(10, 2)
    calib = CalibrationSet({"x": data}, labels=np.arange(10), origin="d.npz")
    first, rest = calib.split(7)
    assert (len(first), len(rest)) == (7, 3)
    np.testing.assert_array_equal(rest.arrays["x"], data[7:])
    np.testing.assert_array_equal(rest.labels, [7, 8, 9])
    assert first.description == "d.npz[:7]: 7 samples"
    assert len(calib.take(3)) == 3 and len(calib.take(50)) == 10
    np.testing.assert_array_equal(calib.take(3).arrays["x"], data[:3])
    for bad in (0, 10):
        with pytest.raises(UsageError, match=r"cannot split 10 samples"):
            calib.split(bad)
    with pytest.raises(UsageError, match=r"positive integer"):
        calib.take(0)


def test_hold_out_spreads_the_held_samples_over_an_ordered_set(tmp_path):
    """An ordered set (by class here) keeps every class in both parts, and reads stay lazy: a subset of a
    memory-mapped archive keeps the archive's array."""
    data = rng_array(20, 2)
    path = tmp_path / "calib.npz"
    np.savez(path, x=data, labels=np.repeat([0, 1, 2, 3], 5))
    calib = load_calibration(path, make_model({"x": (TensorProto.FLOAT, ["N", 2])}))
    rest, held = calib.hold_out(4)
    assert (len(rest), len(held)) == (16, 4)
    assert sorted(held.labels) == [0, 1, 2, 3] and sorted(set(rest.labels)) == [0, 1, 2, 3]
    picked = [int(np.flatnonzero((data == row).all(axis=1))[0]) for row in held.arrays["x"]]
    assert picked == [2, 7, 12, 17]
    kept = np.concatenate([batch["x"] for batch in rest.batches(3)])
    np.testing.assert_array_equal(kept, np.delete(data, picked, axis=0))
    np.testing.assert_array_equal(rest.take(2).arrays["x"], data[[0, 1]])  # a subset of a subset
    assert "4 held out, spread over the set" in held.description
    assert rest._sources["x"].data is calib._sources["x"].data  # indices into the archive, not a copy
    for bad in (0, 20):
        with pytest.raises(UsageError, match=r"cannot hold out"):
            calib.hold_out(bad)


def test_hold_out_of_an_image_folder_picks_the_images(tmp_path):
    pytest.importorskip("PIL")
    for index in range(5):
        write_image(tmp_path / f"{index}.png", solid_image(8, 8, (index * 50, 0, 0)))
    rest, held = load_calibration(tmp_path, image_model()).hold_out(1)
    assert len(rest) == 4
    np.testing.assert_allclose(held.arrays["input"][:, 0, 0, 0], [100 / 255], atol=1e-6)  # the middle one


def test_fixed_batch_model_batches_and_tail(tmp_path, caplog):
    path = tmp_path / "calib.npz"
    np.savez(path, input=rng_array(5, 3, 8, 8))
    calib = load_calibration(path, image_model((2, 3, 8, 8)))
    assert calib.fixed_batch == 2
    assert [len(batch["input"]) for batch in calib.batches(16)] == [2, 2]
    assert "last 1 samples skipped" in caplog.text
    with pytest.raises(OnnxSlimError, match=r"fixed batch size of 2 but there are 1 samples"):
        load_calibration(path, image_model((2, 3, 8, 8)), samples=1)


def test_bad_batch_size():
    with pytest.raises(UsageError, match=r"batch size must be a positive integer, got 0"):
        next(CalibrationSet({"x": rng_array(3, 2)}).batches(0))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"samples": 0}, r"samples must be a positive integer, got 0"),
        ({"layout": "chw"}, r"layout must be one of nchw, nhwc, got 'chw'"),
        ({"channel_order": "rbg"}, r"channel_order must be one of rgb, bgr, got 'rbg'"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(UsageError, match=message):
        load_calibration("random", image_model(), **options)
