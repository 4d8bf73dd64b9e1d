"""Importing this package registers every ``*_dataset.py`` module in basicsr's DATASET_REGISTRY."""
from .._registry_import import import_modules

import_modules(__name__, __file__, "_dataset")
