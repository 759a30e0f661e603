"""Pipeline config files and options: every mistake is one usage-error line naming the file or option."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from onnx_slim.cli import main
from onnx_slim.errors import UsageError
from onnx_slim.pipeline.config import PipelineConfig, config_from_mapping, load_config

DEMO = Path(__file__).parents[2] / "models" / "digits_cnn.onnx"


def run_cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
        raise SystemExit(0)
    return done.value.code or 0, capsys.readouterr().err


def write(tmp_path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    pytest.importorskip("yaml")
    path = write(tmp_path, "bad.yaml", "ratio: 0.5\n  bad: [1\n")
    with pytest.raises(UsageError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"config {path}: invalid YAML at line 2, column 6: ")
    assert "\n" not in message


def test_yaml_integer_key_is_refused(tmp_path):
    pytest.importorskip("yaml")
    path = write(tmp_path, "keys.yaml", "1: 2\n")
    with pytest.raises(UsageError, match=r"keys\.yaml: option names must be text, got 1"):
        load_config(path)


def test_yaml_empty_value_means_the_default(tmp_path):
    pytest.importorskip("yaml")
    path = write(tmp_path, "empty.yaml", "round-to:\nexclude:\nratio: 0.3\n")
    config = config_from_mapping(load_config(path))
    assert config.round_to == PipelineConfig().round_to and config.exclude == [] and config.ratio == 0.3


def test_non_utf8_toml_names_the_file(tmp_path):
    path = write(tmp_path, "latin1.toml", "ratio = 0.5 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"config .*latin1\.toml: not UTF-8 text \(byte 0xe9 at offset 17\)"):
        load_config(path)


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "bad.toml", "ratio = \n")
    with pytest.raises(UsageError, match=r"config .*bad\.toml: invalid TOML: "):
        load_config(path)


@pytest.mark.parametrize("content, message", [
    ("exclude = 5\n", r"option exclude: 5 is not a node-name pattern or a list of them"),
    ("exclude = ['conv*', 3]\n", r"option exclude: \['conv\*', 3\] is not a node-name pattern or a list of them"),
    ("input_shapes = 5\n", r"option input-shapes: 5 is not NAME=DIMS"),
    ("input_shapes = {input = true}\n", r"option input-shapes: \{'input': True\} is not NAME=DIMS"),
    ("input_shapes = {input = [1, 'x']}\n", r"option input-shapes: .* is not NAME=DIMS"),
    ("input-shape = ['input=1,x']\n", r"bad input shape 'input=1,x'"),
    ("input_values = {sr = 'fast'}\n", r"option input-values: .* is not NAME=NUMBER"),
    ("input-value = ['sr']\n", r"bad input value 'sr'"),
    ("input_size = true\n", r"option input-size: True is not H,W"),
    ("mean = {r = 1}\n", r"option mean: \{'r': 1\} is not a list of numbers"),
    ("max-drop = nan\n", r"option max-drop: nan is not a finite number"),
    ("min-speedup = inf\n", r"option min-speedup: inf is not a finite number"),
    ("max-drop = -1\n", r"option max-drop: -1.0 is negative"),
])
def test_wrong_types_in_toml_name_the_file_and_option(tmp_path, content, message):
    path = write(tmp_path, "slim.toml", content)
    with pytest.raises(UsageError) as error:
        load_config(path)
    assert str(error.value).startswith(f"config {path}: ")
    assert error.match(message)


def test_input_shapes_forms_are_normalized(tmp_path):
    path = write(tmp_path, "slim.toml", "input_shapes = {input = '1,1,16,16'}\n")
    assert load_config(path)["input_shapes"] == {"input": [1, 1, 16, 16]}
    assert config_from_mapping({"input_shapes": ["input=2,1,16,16"]}).input_shapes == {"input": [2, 1, 16, 16]}
    assert config_from_mapping({"exclude": "conv*"}).exclude == ["conv*"]
    values = write(tmp_path, "values.toml", "input_value = {sr = 16000, state = 0.5}\n")
    assert config_from_mapping(load_config(values)).input_values == {"sr": 16000.0, "state": 0.5}
    assert config_from_mapping({"input_values": ["sr=8000"]}).input_values == {"sr": 8000.0}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_gate_is_refused(value):
    with pytest.raises(UsageError, match=r"option max-drop: .* is not a finite number"):
        config_from_mapping({"max_drop": value})


@pytest.mark.parametrize("name, content", [
    ("bad.yaml", "ratio: 0.5\n  bad: [1\n"),
    ("bad.toml", "exclude = 5\n"),
    ("bad.toml", "input_shapes = 5\n"),
    ("bad.toml", b"ratio = 0.5 # \xff\xfe\n"),
])
def test_cli_config_mistakes_exit_2_in_one_line(capsys, tmp_path, name, content):
    model = tmp_path / "m.onnx"
    shutil.copy(DEMO, model)
    config = write(tmp_path, name, content)
    code, stderr = run_cli(capsys, "run", model, "-o", tmp_path / "out", "--config", config, "--quiet")
    assert code == 2
    assert stderr.startswith(f"error: config {config}: ")
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_max_drop_nan_exits_2(capsys, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(DEMO, model)
    code, stderr = run_cli(capsys, "run", model, "-o", tmp_path / "out", "--max-drop", "nan", "--quiet")
    assert code == 2
    assert stderr.strip() == "error: option max-drop: nan is not a finite number"
    assert not (tmp_path / "out").exists()


def test_providers_in_a_config_file_take_either_spelling(tmp_path):
    assert load_config(write(tmp_path, "a.toml", 'provider = "cuda,cpu"\n'))["providers"] == ["cuda,cpu"]
    options = load_config(write(tmp_path, "b.toml", 'providers = ["tensorrt", "cuda"]\n'
                                                    'provider-options = ["device_id=1"]\n'))
    assert config_from_mapping(options).providers == ["tensorrt", "cuda"]
    assert config_from_mapping(options).provider_options == ["device_id=1"]


def test_an_unavailable_provider_in_the_config_stops_the_run_before_it_starts(capsys, tmp_path):
    missing = next(name for name in ort.get_all_providers() if name not in ort.get_available_providers())
    model = tmp_path / "m.onnx"
    shutil.copy(DEMO, model)
    config = write(tmp_path, "c.toml", f'providers = ["{missing}"]\n')
    code, stderr = run_cli(capsys, "run", model, "-o", tmp_path / "out", "--config", config, "--quiet")
    assert code == 2
    assert stderr.startswith(f"error: execution provider {missing} is not available")
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_config_takes_auto_and_a_latency_target(tmp_path):
    path = write(tmp_path, "search.toml", 'target-macs = "auto"\nround-to = "auto"\nmax-drop = 1.5\n'
                                          'eval = "test.npz"\n')
    config = config_from_mapping(load_config(path))
    assert config.target_macs == "auto" and config.round_to == "auto" and config.max_drop == 1.5
    latency = config_from_mapping(load_config(write(tmp_path, "latency.toml", "target-latency = 12.5\n")))
    assert latency.target_latency == 12.5 and latency.with_defaults().target_macs is None
    assert PipelineConfig().round_to == "auto"


@pytest.mark.parametrize("content, message", [
    ('target-macs = "most"\n', "target-macs: 'most' is not a number or 'auto'"),
    ('round-to = "fast"\n', "round-to: 'fast' is not a whole number or 'auto'"),
    ("target-latency = -3\n", "target-latency: -3.0 is negative"),
])
def test_config_search_values_are_checked(tmp_path, content, message):
    with pytest.raises(UsageError, match=message):
        load_config(write(tmp_path, "bad.toml", content))


def test_grouped_conv_in_a_config_file_is_checked(tmp_path):
    config = config_from_mapping(load_config(write(tmp_path, "g.toml", 'grouped-conv = "groups"\n')))
    assert config.with_defaults().grouped_conv == "groups"
    bad = config_from_mapping(load_config(write(tmp_path, "b.toml", 'grouped-conv = "rows"\n')))
    with pytest.raises(UsageError, match="grouped-conv must be channels or groups, got 'rows'"):
        bad.with_defaults()


@pytest.mark.parametrize("values, expected", [
    ({"calib": "calib.npz"}, "auto"),  # the default target: half the MACs
    ({"calib": "calib.npz", "target_macs": 0.7}, "auto"),
    ({"calib": "random", "target_macs": 0.7}, "uniform"),  # nothing real to compare the candidates on
    ({"target_macs": 0.7}, "uniform"),
    ({"calib": "calib.npz", "ratio": 0.3}, "uniform"),
    ({"calib": "calib.npz", "target_latency": 5.0}, "uniform"),
    ({"calib": "calib.npz", "allocate": "sensitivity"}, "sensitivity"),
])
def test_allocation_defaults_to_auto_where_it_can_run(values, expected):
    assert config_from_mapping(values).with_defaults().allocate == expected


def test_prune_cli_compares_allocations_when_given_data_and_a_macs_target(capsys, tmp_path):
    models = DEMO.parent
    common = [DEMO, "--calib", models / "digits_calib.npz", "--calib-samples", "60", "--round-to", "1", "--json",
              "--quiet"]
    reports = []
    for target in (["--target-macs", "0.7"], ["--ratio", "0.3"]):
        with pytest.raises(SystemExit) as done:
            main(["prune", *map(str, common), "-o", str(tmp_path / f"{len(reports)}.onnx"), *target])
            raise SystemExit(0)
        assert not done.value.code
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["allocate"].startswith("auto: ") and reports[0]["search"]["kind"] == "allocation"
    assert reports[1]["allocate"] == "uniform" and reports[1]["search"] is None


def test_max_layer_error_is_a_non_negative_number():
    assert config_from_mapping({"max_layer_error": 0.1}).max_layer_error == 0.1
    assert config_from_mapping({}).max_layer_error is None  # quantize_model's own default
    with pytest.raises(UsageError, match="max-layer-error: -0.5 is negative"):
        config_from_mapping({"max_layer_error": -0.5})


def test_command_line_inputs_replace_the_files_name_by_name():
    """`--input-value sr=8000` over a config holding sr and state dropped the state: 'missing state'."""
    from onnx_slim.pipeline.config import over_config

    merged = over_config({"input_values": {"sr": 16000.0, "state": 0.0}, "ratio": 0.3, "runs": 5},
                         {"input_values": ("sr=8000",), "target_macs": 0.5}, {"runs": 50, "seed": 0})
    config = config_from_mapping(merged)
    assert config.input_values == {"sr": 8000.0, "state": 0.0}
    assert config.ratio is None and config.target_macs == 0.5 and config.runs == 5 and config.seed == 0
