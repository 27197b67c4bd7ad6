"""lcenet: extreme multi-label text classification with the Label Correlation Enhancement Network."""

from lcenet.lcenet import LCENet, LCENetWrapped, with_lcenet

__version__ = "0.1.0"
__all__ = ["LCENet", "LCENetWrapped", "with_lcenet", "__version__"]
