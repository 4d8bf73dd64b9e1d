"""Test a trained diffir model on the test sets of a YAML option file.

    python test.py -opt options/test/SR/test_DiffIRS2_x4.yml
"""
import diffir  # installs the torchvision alias basicsr needs: must precede basicsr imports
from diffir.test_pipeline import test_pipeline

if __name__ == "__main__":
    diffir.register()  # archs/models/losses/datasets into basicsr's registries
    test_pipeline()
