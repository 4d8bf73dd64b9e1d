"""Importing this package registers every ``*_loss.py`` module in basicsr's LOSS_REGISTRY."""
from .._registry_import import import_modules

import_modules(__name__, __file__, "_loss")
