"""Importing this package registers every ``*_model.py`` module in basicsr's MODEL_REGISTRY."""
from .._registry_import import import_modules

import_modules(__name__, __file__, "_model")
