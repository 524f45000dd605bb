"""The default container image of every component (docker/Dockerfile.cuda or .cpu);
`feda2v compile --image` overrides it per pipeline."""

import os

IMAGE = os.environ.get("FEDA2V_IMAGE", "feda2v-python:0.1.0")
