"""Training: the SCIR forward step for Megatron-Core's schedules, optimizer/DDP, the reference
pass, checkpoints and metrics logging.

Submodules are imported explicitly (``from megatron_scir.training.forward_step import
make_forward_step``) so that importing this package does not import Megatron-Core.
"""
