"""The dataset error (its own module so that every lister can raise it)."""
from __future__ import annotations

from ..errors import HptError


class DatasetError(HptError, ValueError):
    """A dataset is missing, empty or malformed (raised before any training work)."""
