"""crema-fast's Triton kernels: each op beside its plain-PyTorch reference.

PyPI has an unrelated package that is also imported as ``kernels``; the marker below lets
``crema_fast`` tell ours from it and fail loudly when the wrong one is on the path.
"""

CREMA_FAST_KERNELS = "crema-fast"
