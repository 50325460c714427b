#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from setuptools import find_packages, setup

APP = ["fastapi", "uvicorn", "python-multipart", "httpx"]

setup(
    name="personsearch_kd",
    version="0.1.0",
    description="End-to-end person search (OIM) with knowledge distillation for detectron2",
    license="Apache-2.0",
    packages=find_packages(include=["personsearch_kd", "personsearch_kd.*"]),
    package_data={"personsearch_kd.app": ["static/*"]},  # the web app's page
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
    extras_require={
        # The web app (tools/serve.py): FastAPI for the API and its OpenAPI page, uvicorn to
        # serve it, python-multipart for uploads; httpx: tools/benchmark_serve.py's client.
        "app": APP,
        # scikit-learn: the reference average_precision_score the metric tests compare against;
        # httpx2: FastAPI's test client; selenium: the browser test (drives Debian's chromium).
        "test": ["pytest", "scikit-learn", "httpx2", "selenium"] + APP,
    },
)
