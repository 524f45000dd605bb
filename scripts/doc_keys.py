"""Rewrite the config-key reference in docs/configuration.md from the code (`make docs`)."""

from pathlib import Path

from feda2v.io.config import describe_keys

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
START, END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"

text = PAGE.read_text()
head, rest = text.split(START)
_, tail = rest.split(END)
PAGE.write_text(f"{head}{START}\n```\n{describe_keys()}\n```\n{END}{tail}")
