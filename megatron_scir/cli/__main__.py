"""``python -m megatron_scir.cli <command> ...`` (what ``torchrun -m`` and ``srun python -m``
launch; the same as the ``scir`` console script)."""

import sys

from megatron_scir.cli import main

sys.exit(main())
