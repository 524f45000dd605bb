"""Rewrite the README's config-key reference from the code (`make docs`)."""

from pathlib import Path

from feda2v.io.config import describe_keys

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"

text = README.read_text()
head, rest = text.split(START)
_, tail = rest.split(END)
README.write_text(f"{head}{START}\n```\n{describe_keys()}\n```\n{END}{tail}")
