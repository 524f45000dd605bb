"""Pretrained encoders and embedding extraction: audio backbones (AST, CLAP), CLIP text and
image targets, model sources, the per-client extraction with its cache."""
