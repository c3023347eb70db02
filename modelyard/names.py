"""The one pattern a model name and a version must match, checked at every entry point (events,
CLI, API, spec) before a name reaches a path, a config file, a tag, a program or an image name.

Why this strict: a model name ends up in nginx configuration, supervisord program names, file
paths, Docker image tags and Kubernetes object names. Anything outside ``[A-Za-z0-9_.-]`` (a
slash, a quote, a brace, a newline, a space) could escape one of those contexts; ``..`` or a
leading dot could climb out of a directory. MLflow's own names are freer, so modelyard refuses
the rest with a message naming the field.
"""

from __future__ import annotations

import re

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$"
MODEL_NAME_MAX = 64
VERSION_PATTERN = r"^[1-9][0-9]{0,9}$"

_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


class InvalidName(ValueError):
    """A model name or version that modelyard refuses; the message names the field."""


def check_model_name(name: object, field: str = "model") -> str:
    """``name`` if it is a valid model name, else InvalidName naming ``field``."""
    if not isinstance(name, str) or len(name) > MODEL_NAME_MAX or not _MODEL_NAME.fullmatch(name):
        raise InvalidName(f"{field}: {name!r} is not a valid model name (letters, digits, '_', '-' and single "
                          f"'.' between them, starting with a letter or digit, at most {MODEL_NAME_MAX} characters)")
    return name


def check_version(version: object, field: str = "version") -> str:
    """``version`` as a string if it is a registry version number (1, 2, …), else InvalidName."""
    text = str(version) if isinstance(version, int) and not isinstance(version, bool) else version
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise InvalidName(f"{field}: {version!r} is not a valid model version (a positive whole number)")
    return text
