"""Hydra plugin package of DenseFormer Lab (Hydra looks for plugins in `hydra_plugins.*`)."""
