"""Settings refused at start, as the operator reads them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import Settings, describe_validation_error


def failure(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    """The one-line description of why Settings refuses these environment variables."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    return describe_validation_error(caught.value)
