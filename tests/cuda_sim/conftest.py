"""Tests of the Numba-CUDA kernels under numba's CUDA simulator.

The simulator is chosen when numba is first imported (NUMBA_ENABLE_CUDASIM=1), and the main test
process has imported numba long before, for the CPU kernels. So these files are collected only
in a process started with the variable set: tests/test_cuda_kernels.py starts one.
"""
import os

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    collect_ignore_glob = ["test_*.py"]
