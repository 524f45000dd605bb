import json
from pathlib import Path

import pytest

from feda2v.io import config as config_mod
from feda2v.io.config import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_fill_every_key():
    cfg = config_mod.validate({})
    assert cfg.global_rounds == 30
    assert cfg.feda2v.generator_type == "vae"
    assert cfg.feda2v.generator_save_every == 5
    assert cfg.data.clients == config_mod.REFERENCE_SPLIT
    assert len(config_mod.configured_classes(cfg)) == 15


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'feda2v\.generator_typ'.*"
                                          r"did you mean 'generator_type'"):
        config_mod.validate({"feda2v": {"generator_typ": "vae"}})


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'global_round'"):
        config_mod.validate({"global_round": 3})


@pytest.mark.parametrize("raw, key", [
    ({"global_rounds": 0}, "global_rounds"),
    ({"batch_size": "16"}, "batch_size"),
    ({"feda2v": {"generator_type": "diffusion"}}, "feda2v.generator_type"),
    ({"feda2v": {"use_generator": "yes"}}, "feda2v.use_generator"),
    ({"feda2v": {"generator_augmentation_noise": -0.1}}, "feda2v.generator_augmentation_noise"),
    ({"data": {"clients": [["dog"], ["cat", "cat"]]}}, "data.clients"),
    ({"data": {"partition": "kmeans"}}, "data.partition"),
    ({"data": {"test_fraction": 0.95}}, "data.test_fraction"),
    ({"data": {"prompt_template": "a photo"}}, "data.prompt_template"),
    ({"models": {"device": "tpu"}}, "models.device"),
    ({"feda2v": {"generator_type": "gan", "generator_sampling": "posterior"}},
     "feda2v.generator_sampling"),
    ({"feda2v": {"generator_dp_epsilon": 4.0, "generator_sampling": "calibrated"}},
     "feda2v.generator_sampling"),
])
def test_bad_value_names_the_key(raw, key):
    with pytest.raises(ConfigError, match=f"bad value for '{key}'"):
        config_mod.validate(raw)


def test_auto_sampling_fits_the_rows_only_where_nothing_forbids_it():
    from feda2v.federated.generators.calibration import sampling_mode

    def mode(**f):
        return sampling_mode(config_mod.validate({"feda2v": f}))

    assert mode() == "posterior"  # the VAE has an encoder
    assert mode(generator_type="gan") == "calibrated"
    assert mode(generator_dp_epsilon=4.0) == "prior"  # nothing outside the DP guarantee
    assert mode(generator_sampling="prior") == "prior"


def test_every_bad_key_is_named_at_once(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"global_rounds": 0, "batch_sise": 8, "feda2v": {"generator_type": "x", '
                    '"generator_tipe": "gan"}, "data": {"test_fraction": 2}}')
    with pytest.raises(ConfigError) as e:
        config_mod.load(path)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{path}: 5 bad keys:"
    assert [line.split("'")[1] for line in lines[1:]] == [
        "global_rounds", "batch_sise", "data.test_fraction", "feda2v.generator_type",
        "feda2v.generator_tipe"]
    assert "did you mean 'batch_size'" in lines[2]


def test_both_generator_types_are_accepted():
    assert config_mod.validate({"feda2v": {"generator_type": "gan"}}).feda2v.generator_type == "gan"


def test_overlapping_folds_are_refused():
    with pytest.raises(ConfigError, match="data.test_folds"):
        config_mod.validate({"data": {"train_folds": [1, 2], "test_folds": [2]}})


def test_load_names_the_file_and_reports_bad_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        config_mod.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"feda2v": {"nope": 1}}))
    with pytest.raises(ConfigError, match=r"wrong.json: unknown config key 'feda2v\.nope'"):
        config_mod.load(wrong)


def test_seed_configs_keep_the_seed_values_and_modes():
    run1 = config_mod.load(CONFIGS / "a2v_generator_training_mode.json")
    run2 = config_mod.load(CONFIGS / "a2v_use_pretrained_generators.json")
    assert run1.global_rounds == 30 and config_mod.pipeline_kind(run1) == "run1"
    assert run1.feda2v.generator_training_epochs == 10
    assert run1.feda2v.global_model_train is False
    assert run2.global_rounds == 50 and config_mod.pipeline_kind(run2) == "run2"
    assert run2.feda2v.synthetic_samples_per_class == 10
    assert run2.feda2v.global_model_train_epochs == 5
    assert config_mod.pipeline_kind(config_mod.load(CONFIGS / "demo.json")) == "end_to_end"


def test_auto_pipeline_follows_mode_flags():
    both = config_mod.validate({"feda2v": {"generator_training_mode": True,
                                           "use_pretrained_generators": True}})
    assert config_mod.pipeline_kind(both) == "run1"  # resume generator training
    run2 = config_mod.validate({"feda2v": {"use_pretrained_generators": True}})
    assert config_mod.pipeline_kind(run2) == "run2"


def test_every_key_is_documented():
    text = config_mod.describe_keys()
    for section in (config_mod.TOP_LEVEL, *config_mod.SECTIONS.values()):
        for key, spec in section.items():
            assert key in text and spec.doc


def test_image_targets_need_a_layout_with_images():
    with pytest.raises(ConfigError, match="bad value for 'data.targets'"):
        config_mod.validate({"data": {"targets": "images"}})  # esc50 has no images
    config_mod.validate({"data": {"targets": "images", "format": "manifest"}})


def test_the_config_is_one_typed_object_parsed_once():
    """validate gives a frozen, typed Config (attribute access, one dataclass per section);
    replace() validates its changes; to_json() round-trips; each field's declared type is its
    default's, and its Key (check and doc) is the one key_spec, the key reference in
    docs/configuration.md and the run form read."""
    import dataclasses
    import typing

    cfg = config_mod.validate({"seed": 3, "feda2v": {"generator_type": "gan"}})
    assert isinstance(cfg, config_mod.Config) and isinstance(cfg.feda2v, config_mod.FedA2V)
    assert (cfg.seed, cfg.feda2v.generator_type, cfg.data.partition) == (3, "gan", "classes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.feda2v.generator_type = "vae"
    changed = cfg.replace(seed=4, feda2v={"synthetic_samples_per_class": 5})
    assert (changed.seed, changed.feda2v.synthetic_samples_per_class, cfg.seed) == (4, 5, 3)
    assert changed.feda2v.generator_type == "gan"  # the rest of the section stays
    with pytest.raises(ConfigError, match="'feda2v.generator_type'"):
        cfg.replace(feda2v={"generator_type": "diffusion"})
    assert config_mod.loads(cfg.to_json()) == cfg
    assert config_mod.as_config(cfg) is cfg  # a stage handed the object parses nothing
    assert config_mod.as_config(cfg.to_json()) == config_mod.as_config(cfg.to_dict()) == cfg
    for cls, where in ((config_mod.RunKeys, ""), (config_mod.Data, "data."),
                       (config_mod.Models, "models."), (config_mod.FedA2V, "feda2v.")):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            spec = config_mod.key_spec(where + f.name)
            assert f.metadata["key"] is spec
            origin = typing.get_origin(hints[f.name]) or hints[f.name]
            assert type(spec.default) is origin, f"{where}{f.name}: {hints[f.name]}"


# --- the run form's typed settings, as runtime.resolve applies them --------------------------

RUN_FORM = {"seed": "7.0", "storage_root": "s3://bucket/other-root",
            "dataset_uri": "s3://bucket/esc50", "batch_size": "32.0"}


@pytest.mark.parametrize("execution", ["phase", "round"])
def test_resolve_applies_seed_storage_root_dataset_and_batch_size(execution):
    """KFP hands a dict parameter's values over as strings: each takes its key's type, in
    either execution (round execution compiles rounds and clients, not these)."""
    from feda2v.orchestration import runtime

    cfg = config_mod.validate({"execution": execution, "pipeline": "run1", "seed": 3})
    compiled = runtime.compiled_values(cfg)
    got = runtime.resolve(cfg.to_json(), compiled, settings=RUN_FORM)
    assert (got.seed, got.storage_root, got.data.dataset_uri, got.batch_size) == (
        7, "s3://bucket/other-root", "s3://bucket/esc50", 32)
    # The form's value is the compiled one: an edit of config_json alone takes effect.
    unchanged = {"seed": "3", "batch_size": str(float(cfg.batch_size)),
                 "storage_root": cfg.storage_root, "dataset_uri": cfg.data.dataset_uri}
    edited = cfg.replace(seed=5, data={"dataset_uri": "/data/mine"})
    got = runtime.resolve(edited.to_json(), compiled, settings=unchanged)
    assert (got.seed, got.data.dataset_uri) == (5, "/data/mine")


@pytest.mark.parametrize("name, key, edit", [
    ("seed", "seed", {"seed": 5}),
    ("storage_root", "storage_root", {"storage_root": "/elsewhere"}),
    ("dataset_uri", "data.dataset_uri", {"data": {"dataset_uri": "/data/mine"}}),
    ("batch_size", "batch_size", {"batch_size": 4}),
])
@pytest.mark.parametrize("execution", ["phase", "round"])
def test_resolve_refuses_a_key_set_two_ways_by_name(name, key, edit, execution):
    from feda2v.orchestration import runtime

    cfg = config_mod.validate({"execution": execution, "pipeline": "run1"})
    compiled = runtime.compiled_values(cfg)
    with pytest.raises(ConfigError, match=rf"'{key}' is .* in config_json but .* in the "
                                          rf"run-time parameter {name}; set one of them"):
        runtime.resolve(cfg.replace(**edit).to_json(), compiled, settings={name: RUN_FORM[name]})


def test_resolve_refuses_bad_run_time_settings_by_name():
    from feda2v.orchestration import runtime

    cfg = config_mod.validate({"pipeline": "run1"})
    compiled = runtime.compiled_values(cfg)
    for settings, match in (({"batch_size": "0"}, "batch_size"),
                            ({"seed": "many"}, "run-time parameter 'seed'"),
                            ({"storage_root": ""}, "storage_root"),
                            ({"dataset_uri": "s3://user:pw@host/esc50"},
                             "'dataset_uri': it contains credentials")):
        with pytest.raises(ConfigError, match=match):
            runtime.resolve(cfg.to_json(), compiled, settings=settings)


def test_every_run_form_has_the_common_settings():
    from feda2v.orchestration import runtime

    for phases in (["fedavg"], ["run1"], ["run2"], ["run1", "run2"]):
        names = runtime.form_settings(phases)
        assert set(runtime.COMMON_SETTINGS) <= set(names) <= set(runtime.SETTINGS)
    assert runtime.SETTINGS["dataset_uri"] == "data.dataset_uri"
    assert {"seed", "storage_root", "dataset_uri", "batch_size"} <= set(runtime.COMMON_SETTINGS)
