"""Test a trained diffir model on the test sets of a YAML option file.

    python test.py -opt options/test/SR/test_DiffIRS2_x4.yml
"""
import diffir  # noqa: F401  (registers archs/models/losses/datasets; must precede basicsr imports)
from diffir.test_pipeline import test_pipeline

if __name__ == "__main__":
    test_pipeline()
