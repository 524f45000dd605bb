"""The container image every component runs in (built from docker/Dockerfile)."""

import os

IMAGE = os.environ.get("FEDA2V_IMAGE", "feda2v-python:0.1.0")
