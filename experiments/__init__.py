"""Runnable experiments reproducing the classic gradient-descent material with jaxgd."""
