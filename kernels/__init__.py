"""Hand-written hot paths (Numba), installed as ``tinymaskrcnn.kernels``.

Every kernel here has a readable NumPy twin with the same signature (suffix ``_reference``);
tests hold the two equal, and the notebooks explain the twin first.
"""
