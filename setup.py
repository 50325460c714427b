#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from setuptools import find_packages, setup

setup(
    name="personsearch_kd",
    version="0.1.0",
    description="End-to-end person search (OIM) with knowledge distillation for detectron2",
    license="Apache-2.0",
    packages=find_packages(include=["personsearch_kd", "personsearch_kd.*"]),
    python_requires=">=3.9",
    # detectron2 is not on PyPI: install it from its repository first (README, Install).
    install_requires=[
        "torch",
        "torchvision",
        "fvcore",
        "pycocotools",
        "numpy",
        "opencv-python-headless",
        "scipy",
        "faiss-cpu",  # the gallery index (personsearch_kd.search); the GPU build works too
    ],
    # scikit-learn: the reference average_precision_score the metric tests compare against.
    extras_require={"test": ["pytest", "scikit-learn"]},
)
