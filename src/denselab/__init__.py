"""DenseFormer Lab: reproduce, extend and challenge DenseFormer (Pagliardini et al., NeurIPS 2024)."""

__version__ = "0.1.0"
