"""s5ssm: S5, the Simplified State Space layer (Smith, Warrington & Linderman, ICLR 2023), in PyTorch.

    >>> import torch, s5ssm
    >>> model = s5ssm.S5Model(embed_dim=3, hidden_size=16, state_size=8, num_layers=2)
    >>> model(torch.randn(2, 50, 3)).shape
    torch.Size([2, 16])
"""

from .block import S5Block
from .export import export
from .memory import keep_freed_memory
from .model import S5Model, StreamCache, recommended_defaults
from .scan import linear_scan
from .ssm import S5SSM

__version__ = "0.1.0"
__all__ = ["S5SSM", "S5Block", "S5Model", "StreamCache", "linear_scan", "recommended_defaults", "S5Classifier",
           "S5Regressor", "export", "keep_freed_memory", "__version__"]  # fmt: skip


def __getattr__(name: str):
    """The scikit-learn estimators, imported on first use (scikit-learn loads slowly)."""
    if name in ("S5Classifier", "S5Regressor"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 's5ssm' has no attribute {name!r}")
