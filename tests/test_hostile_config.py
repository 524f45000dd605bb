"""Hostile configs (issue 21, failure 7): absurd numbers, huge strings, huge or deeply nested
JSON are refused at once, in one line naming the key or the file, never a traceback."""

import json
import time

import pytest

from feda2v.cli import main
from feda2v.io import config as config_mod
from feda2v.io.config import ConfigError


def _refused(raw, *expected):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        config_mod.validate(raw)
    assert time.perf_counter() - start < 1
    text = str(e.value)
    assert "\n" not in text and len(text) < 600, text
    for part in expected:
        assert part in text, text
    return text


@pytest.mark.parametrize("raw, key, most", [
    ({"global_rounds": 1_000_000_000}, "'global_rounds'", "100000"),
    ({"local_epochs": 10**9}, "'local_epochs'", "10000"),
    ({"batch_size": 10**9}, "'batch_size'", "65536"),
    ({"seed": 2**64}, "'seed'", str(2**32 - 1)),
    ({"learning_rate": 1e300}, "'learning_rate'", "10.0"),
    ({"data": {"partition": "iid", "num_clients": 10**6}}, "'data.num_clients'", "1000"),
    ({"data": {"clip_seconds": 1e9}}, "'data.clip_seconds'", "600"),
    ({"data": {"train_folds": [1, 10**9]}}, "'data.train_folds'", "1000"),
    ({"models": {"extract_workers": 10**5}}, "'models.extract_workers'", "256"),
    ({"models": {"audio_tokens": 10**7}}, "'models.audio_tokens'", "1024"),
    ({"feda2v": {"generator_training_rounds": 10**9}},
     "'feda2v.generator_training_rounds'", "100000"),
    ({"feda2v": {"synthetic_samples_per_class": 10**9}},
     "'feda2v.synthetic_samples_per_class'", "10000"),
    ({"feda2v": {"generator_hidden_dim": 10**9}}, "'feda2v.generator_hidden_dim'", "65536"),
    ({"feda2v": {"adapter_hidden_dims": [64, 10**9]}}, "'feda2v.adapter_hidden_dims'", "65536"),
])
def test_a_number_past_its_bound_is_refused_naming_key_and_bound(raw, key, most):
    _refused(raw, f"bad value for {key}", f"is more than the most, {most} (")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(value):
    _refused({"learning_rate": value}, "'learning_rate'", "finite")


def test_bounds_themselves_are_accepted():
    cfg = config_mod.validate({"global_rounds": config_mod.MAX_ROUNDS,
                               "seed": 2**32 - 1,
                               "data": {"prompt_template": "{label}" + "x" * 993}})
    assert cfg.global_rounds == 100_000


@pytest.mark.parametrize("raw, key, most", [
    ({"data": {"prompt_template": "a photo of {label} " + "x" * 200_000}},
     "'data.prompt_template'", "1000 characters"),
    ({"storage_root": "s3://b/" + "x" * 5000}, "'storage_root'", "2048 characters"),
    ({"models": {"audio_model": "x" * 5000}}, "'models.audio_model'", "2048 characters"),
    ({"experiment_name": "x" * 300}, "'experiment_name'", "200 characters"),
    ({"mlflow_register_model": "x" * 300}, "'mlflow_register_model'", "200 characters"),
])
def test_a_long_string_is_refused_naming_key_and_cap(raw, key, most):
    text = _refused(raw, f"bad value for {key}", f"is more than the most, {most}")
    assert "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" not in text


def test_a_config_too_big_for_the_command_line_is_refused_naming_the_file(tmp_path):
    # Every value within its own cap, the whole over 64 KB: 300 clients of 5 long class names.
    clients = [[f"class-{i}-{j}-" + "n" * 40 for j in range(5)] for i in range(300)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"data": {"clients": clients}}))
    with pytest.raises(ConfigError) as e:
        config_mod.load(path)
    text = str(e.value)
    assert text.startswith(f"{path}: the config is ") and "more than the most, 64 KB" in text
    assert "\n" not in text


def test_a_huge_config_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text('{"seed": 1' + " " * (2 * 1024 * 1024) + "}")
    with pytest.raises(ConfigError, match=r"huge\.json: the config file is 2048 KB, more than"):
        config_mod.load(path)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"data": ' * 50_000,
                                  '{"seed": ' + "[" * 500 + "]" * 500 + "}"])
def test_deeply_nested_json_is_one_line_naming_the_file(tmp_path, text):
    path = tmp_path / "deep.json"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        config_mod.load(path)
    assert time.perf_counter() - start < 1
    assert str(e.value).startswith(f"{path}: ") and "nested too deeply" in str(e.value)
    with pytest.raises(ConfigError, match="nested too deeply"):
        config_mod.loads(text)


def test_an_integer_of_ten_thousand_digits_names_the_file(tmp_path):
    path = tmp_path / "digits.json"
    path.write_text('{"seed": ' + "9" * 10_000 + "}")
    with pytest.raises(ConfigError, match=r"digits\.json: not valid JSON"):
        config_mod.load(path)


def test_deep_param_value_is_one_line_naming_the_param():
    with pytest.raises(ConfigError) as e:
        config_mod.override({}, ["data.classes=" + "[" * 100_000])
    assert str(e.value).startswith("--param 'data.classes=[[[") and "nested too deeply" in str(
        e.value)
    assert len(str(e.value)) < 300


def test_many_bad_keys_list_twenty():
    text = str(pytest.raises(ConfigError, config_mod.validate,
                             {f"k{i}": i for i in range(1000)}).value)
    assert text.startswith("1000 bad keys:") and "… and 980 more" in text
    assert text.count("\n") == 21


@pytest.mark.parametrize("rounds, kind, what", [
    ({"global_rounds": 81}, "run1", "81 is more than the most, 80"),
    ({"global_rounds": 50, "feda2v": {"generator_training_rounds": 31}}, "end_to_end",
     "50 + 31 = 81 is more than the most, 80"),
])
def test_round_execution_caps_the_rounds_it_unrolls(rounds, kind, what):
    cfg = config_mod.validate({**rounds, "execution": "round"})
    error = config_mod.round_execution_error(cfg, kind)
    assert "'global_rounds'" in error and "'execution'" in error and what in error
    assert config_mod.round_execution_error(cfg.replace(execution="phase"), kind) is None
    assert config_mod.round_execution_error(cfg, "ablations") is None
    # the seed's runs, 30 + 50, still compile in round execution
    assert config_mod.round_execution_error(
        cfg.replace(global_rounds=50, feda2v={"generator_training_rounds": 30}),
        "end_to_end") is None


def _cli(argv, capsys):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert time.perf_counter() - start < 1
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


def test_cli_config_check_refuses_a_billion_rounds(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"global_rounds": 1_000_000_000}))
    err = _cli(["config", "check", "--config", str(path)], capsys)
    assert f"{path}: bad value for 'global_rounds': 1000000000 is more than the most, 100000" in err


def test_cli_config_check_refuses_a_200_kb_prompt_naming_the_key(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": {"prompt_template": "{label}" + "x" * 200_000}}))
    err = _cli(["config", "check", "--config", str(path)], capsys)
    assert "'data.prompt_template'" in err and len(err) < 600


def test_cli_config_check_refuses_deep_nesting_naming_the_file(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text("[" * 100_000)
    err = _cli(["config", "check", "--config", str(path)], capsys)
    assert f"{path}: nested too deeply" in err


def test_cli_compile_refuses_round_execution_past_its_cap(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"global_rounds": 100_000, "execution": "phase"}))
    out = tmp_path / "p.yaml"
    err = _cli(["compile", "--config", str(path), "--execution", "round", "--no-preflight",
                "--output", str(out)], capsys)
    assert "'global_rounds'" in err and "'execution' 'round'" in err and "most, 80" in err
    assert not out.exists()
