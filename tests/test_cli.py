import subprocess
import sys

import pytest

from feda2v.cli import build_parser, main

STAGES = ["class-targets", "extract", "init-adapter", "client-round", "aggregate",
          "global-train", "evaluate"]


def _help(*args) -> str:
    return subprocess.run([sys.executable, "-m", "feda2v.cli", *args, "--help"],
                          capture_output=True, text=True, check=True).stdout


def test_top_level_help_lists_every_command():
    text = _help()
    for command in [*STAGES, "run", "compile", "data", "models", "config"]:
        assert command in text


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_option_has_help(stage):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[stage]
    assert sub.description
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{stage} {action.option_strings} has no help"
    assert "--config" in _help(stage)


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"feda2v": {"generator_type": "diffusion"}}')
    with pytest.raises(SystemExit) as e:
        main(["config", "check", "--config", str(cfg)])
    assert e.value.code == 2
    assert "bad value for 'feda2v.generator_type'" in capsys.readouterr().err


def test_config_keys_prints_defaults(capsys):
    main(["config", "keys"])
    out = capsys.readouterr().out
    assert "feda2v.generator_save_every = 5" in out
