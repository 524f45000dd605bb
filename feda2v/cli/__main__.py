"""`python -m feda2v.cli`: the `feda2v` command."""

from feda2v.cli import main

main()
