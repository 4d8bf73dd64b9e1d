from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "diffir" / "version.py").read_text(), version)

setup(
    name="diffir",
    version=version["__version__"],
    description="DiffIR and DiffLoss: efficient diffusion-based image restoration on basicsr",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["diffir", "diffir.*"]),
    install_requires=[line.strip() for line in (here / "requirements.txt").read_text().splitlines()
                      if line.strip() and not line.startswith("#")],
    extras_require={
        "test": ["pytest>=7", "ruff", "spandrel>=0.4", "safetensors>=0.4", "gradio>=6", "gradio_client", "selenium",
                 "onnx", "onnxruntime"],
        "onnx": ["onnx", "onnxruntime"],
        "spandrel": ["spandrel>=0.4"],
        "app": ["gradio>=6"],
    },
    entry_points={"console_scripts": ["diffir-restore=diffir.cli:main", "diffir-export=diffir.cli:export_main",
                                      "diffir-benchmark=diffir.benchmark.cli:main",
                                      "diffir-convert=diffir.convert:main",
                                      "diffir-make-options=diffir.make_options:main",
                                      "diffir-app=diffir.app:main"]},
)
