import os
import subprocess
import sys

import pytest

from feda2v.cli import build_parser, main

STAGES = ["class-targets", "extract", "init-adapter", "phase", "train-generator", "generate",
          "client-round", "server-round", "evaluate"]


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
    assert "--config" in sub.format_help()


def test_help_and_config_check_do_not_import_torch_or_mlflow():
    """A task or a user pays for heavy imports only where they are used."""
    probe = ("import sys\nfrom feda2v import cli\n"
             "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'mlflow', 'transformers', 'kfp') if m in sys.modules]\n"
             "print('HEAVY', heavy, file=sys.stderr)")
    for args in (["--help"], ["config", "check", "--config", "configs/demo.json"],
                 ["config", "keys"]):
        err = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                             text=True, check=True).stderr
        assert "HEAVY []" in err, (args, err[-500:])


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


def test_the_image_entrypoint_passes_whole_commands_through(tmp_path):
    """ENTRYPOINT is `feda2v`; with FEDA2V_PASSTHROUGH=1 (set in the images) a command such as
    KFP's `sh -c …` runs as it is, while sub-commands and unknown words stay feda2v's."""
    import os

    env = dict(os.environ, FEDA2V_PASSTHROUGH="1")
    run = [sys.executable, "-m", "feda2v.cli"]
    proc = subprocess.run([*run, "sh", "-c", "echo through; exit 3"], env=env,
                          capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout) == (3, "through\n")
    assert "usage: feda2v" in subprocess.run([*run, "--help"], env=env, capture_output=True,
                                             text=True, check=True).stdout
    unknown = subprocess.run([*run, "no-such-program-xyz"], env=env, capture_output=True,
                             text=True, check=False)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    outside = subprocess.run([*run, "sh", "-c", "exit 3"], capture_output=True, text=True,
                             check=False)  # outside the image: no pass-through
    assert outside.returncode == 2 and "invalid choice" in outside.stderr


def test_version_prints_the_installed_version_without_heavy_imports():
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "feda2v.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"feda2v {version('feda2v')}"
    probe = ("import sys\nfrom feda2v import cli\ntry:\n    cli.main(['--version'])\n"
             "except SystemExit:\n    pass\n"
             "print('HEAVY', [m for m in ('torch', 'mlflow', 'kfp') if m in sys.modules])")
    assert "HEAVY []" in subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                        text=True, check=True).stdout


def test_quiet_and_verbose_set_the_log_level_for_this_process_and_its_tasks(tmp_path):
    def lines(*flags):
        proc = subprocess.run([sys.executable, "-m", "feda2v.cli", *flags, "data", "demo",
                               "--out", str(tmp_path / "-".join(flags or ("plain",))),
                               "--clips-per-class", "5"], capture_output=True, text=True,
                              check=True, env={**os.environ, "FEDA2V_LOG_LEVEL": "INFO"})
        return proc.stderr.splitlines()

    assert any(line.startswith("Wrote 75 clips") for line in lines())
    assert lines("-q") == []
    env = dict(os.environ)
    from feda2v.cli import main
    from feda2v.io.log import LEVEL_ENV, get_logger

    try:
        main(["-v", "config", "keys"])
        assert os.environ[LEVEL_ENV] == "DEBUG" and get_logger().level == 10  # tasks inherit it
    finally:
        os.environ.clear()
        os.environ.update(env)
        get_logger().setLevel("INFO")
    with pytest.raises(SystemExit):
        main(["-v", "-q", "config", "keys"])  # one or the other
