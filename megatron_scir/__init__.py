"""megatron-scir: Self-Consistent Internal Rewards on Megatron-Core.

Importing the package is cheap: Megatron-Core and Transformer Engine are imported only by the
modules that need them.
"""

__version__ = "0.1.0.dev0"
