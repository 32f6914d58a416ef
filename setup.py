"""Packaging for tinymaskrcnn.

`kernels/` lives at the top of the repository (it is its own chapter) but is installed as the
subpackage `tinymaskrcnn.kernels` through `package_dir`, so `pip install -e .` and a wheel both
import it under that name and nothing called plain `kernels` is installed.
"""
from setuptools import setup

setup(
    name="tinymaskrcnn",
    version="0.1.0",
    description="Mask R-CNN from scratch in NumPy and Numba, proven equal to torchvision",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "tinymaskrcnn",
        # foundation
        "tinymaskrcnn.core",
        "tinymaskrcnn.functional",
        "tinymaskrcnn.nn",
        "tinymaskrcnn.optim",
        # detector
        "tinymaskrcnn.ops",
        "tinymaskrcnn.models",
        # application
        "tinymaskrcnn.data",
        "tinymaskrcnn.weights",
        "tinymaskrcnn.engine",
        "tinymaskrcnn.cli",
        "tinymaskrcnn.chapters",
        # the floor
        "tinymaskrcnn.kernels",
        "tinymaskrcnn.kernels.cuda",
    ],
    package_dir={"tinymaskrcnn.kernels": "kernels"},
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "threadpoolctl>=3.1",
        "pycocotools>=2.0.7",
        "matplotlib>=3.7",
        "pillow>=10.0",
        "tqdm>=4.60",
        "contourpy>=1.0",
        # data-parallel training over every core and across machines (engine/data_parallel.py):
        # mpi4py's wheels load the MPI library at run time, and the mpich wheel brings one with
        # its mpiexec, so that `pip install .` alone trains on N processes
        "mpi4py>=4.0",
        "mpich>=4.1; sys_platform != 'win32'",
    ],
    extras_require={
        # numba-cuda with its NVRTC/NVVM wheels: the CUDA kernels run in the simulator and compile
        # to PTX without a GPU (tests/test_cuda_kernels.py); wheel: tests build one; scipy: an
        # independent referee in the tests and chapter 2 (the package itself never imports it);
        # cupy-cuda13x imports without a GPU: every xp. call is checked against its namespace
        "dev": ["pytest>=7", "nbformat>=5.9", "nbclient>=0.9", "ipykernel>=6.25", "numba-cuda[cu13]>=0.30",
                "wheel", "scipy>=1.10", "cupy-cuda13x>=14"],
        "reference": ["torch==2.14.1", "torchvision==0.29.1"],
        # to open the chapters (scipy: chapter 2's referee); the tests run them with nbclient (dev)
        "notebooks": ["jupyterlab>=4", "scipy>=1.10"],
        # GPU machines: CuPy's wheels are built per CUDA major version; pick the driver's
        "gpu-cuda12": ["cupy-cuda12x>=13", "numba-cuda[cu12]>=0.30"],
        "gpu-cuda13": ["cupy-cuda13x>=14", "numba-cuda[cu13]>=0.30"],
    },
    entry_points={"console_scripts": ["tinymaskrcnn=tinymaskrcnn.cli:main"]},
)
