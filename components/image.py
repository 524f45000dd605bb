"""The container image of every component: by default the one `make image` builds and tags from
this checkout, `[REGISTRY/]feda2v:VERSION-COMMIT` (`-cpu` for the CPU flavour), so that a
compiled pipeline names the image built from the same code. `$FEDA2V_IMAGE` replaces it,
`$FEDA2V_REGISTRY` prefixes it, and `feda2v compile --image` overrides it per pipeline."""

import os
import re

REPOSITORY = "feda2v"
IMAGE_ENV = "FEDA2V_IMAGE"
REGISTRY_ENV = "FEDA2V_REGISTRY"

# The reference grammar of the distribution spec (what docker, podman and kubelet accept).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
           r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?")
_NAME = re.compile(
    rf"^(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?\Z",
    re.ASCII)  # a tag's \w is [A-Za-z0-9_] as in docker's grammar; \Z: no trailing \n


def _commit() -> str:
    """The 12-character commit `make image` tags with: $FEDA2V_GIT_COMMIT in an image, else
    this checkout's HEAD; empty outside a checkout."""
    from feda2v.io.tracking import source_tags

    commit = source_tags().get("mlflow.source.git.commit", "")
    return commit.removesuffix("-dirty")[:12]


def default_image(flavour: str = "cuda") -> str:
    """$FEDA2V_IMAGE, else what `make image FLAVOUR=flavour` tags from this checkout."""
    from importlib.metadata import PackageNotFoundError, version

    if os.environ.get(IMAGE_ENV):
        return os.environ[IMAGE_ENV]
    try:
        tag = version("feda2v")
    except PackageNotFoundError:  # a source tree that was never installed
        tag = "dev"
    commit = _commit()
    tag += (f"-{commit}" if commit else "") + ("-cpu" if flavour == "cpu" else "")
    registry = os.environ.get(REGISTRY_ENV, "").rstrip("/")
    return f"{registry + '/' if registry else ''}{REPOSITORY}:{tag}"


def _split(reference: str) -> "tuple[str, str]":
    """(registry host or "", the rest), by docker's rule: the first component is a host when
    it has a dot or a port, or is localhost."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "", reference


def check_reference(reference: str, flag: str = "--image") -> str:
    """The reference, or ValueError naming it and what is wrong."""
    host, rest = _split(reference)
    name = _NAME.match(rest)
    if (host and not re.fullmatch(_DOMAIN, host)) or not name or len(name["path"]) > 255:
        hint = ("repository names are lower case" if _NAME.match(rest.lower()) else
                "expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], "
                "e.g. registry.example.com/team/feda2v:0.1.0")
        raise ValueError(f"{flag} {reference!r} is not a valid image reference: {hint}")
    return reference


def has_registry_host(reference: str) -> bool:
    return bool(_split(reference)[0])


IMAGE = default_image()
