"""Parallel helpers: vocab-parallel math, the parallel_state bridge, the CPU (gloo) layer.

Submodules are imported explicitly (``from megatron_scir.parallel.state import ...``) so that
importing this package stays cheap.
"""
