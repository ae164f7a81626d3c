"""``scir verify CKPT``: a checkpoint's files against the hashes written when it was saved.

    scir verify runs/x/iter_1/train/checkpoints/iter_0000008

Prints one line: ``<ckpt>: OK (...)`` and exits 0, or ``scir verify: error: <file>: <what is
wrong>`` and exits 2 (missing, truncated — naming the first tensor whose bytes are gone — or
with other content than at save). Every load runs the same check, ``--resume`` included
(:mod:`megatron_scir.checkpoint.verify`). Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse

HELP = "check a checkpoint's files against the SHA-256 hashes recorded when it was saved"


def register(subparsers) -> None:
    """Add ``verify`` to the ``scir`` sub-commands."""
    parser = subparsers.add_parser("verify", help=HELP, description=HELP)
    parser.add_argument("ckpt", help="a megatron-scir (or Megatron-LM / NeMo 2) checkpoint")
    parser.set_defaults(func=run, prog="scir verify")


def run(args: argparse.Namespace) -> int:
    """0 and the verdict on stdout when every file matches; a CheckpointError (exit 2) else."""
    from megatron_scir.checkpoint import check_checkpoint  # lazy: keeps `scir --help` instant

    print(check_checkpoint(args.ckpt).line(), flush=True)
    return 0
