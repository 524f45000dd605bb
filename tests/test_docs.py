"""The README's config reference is the code's: `make docs` regenerates it."""

from pathlib import Path

from feda2v.io import config as config_mod

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_lists_every_config_key_with_its_current_default():
    text = README.read_text()
    block = text.split("<!-- config-keys:start -->")[1].split("<!-- config-keys:end -->")[0]
    assert block.strip().strip("`").strip() == config_mod.describe_keys()


def test_readme_quick_start_has_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
