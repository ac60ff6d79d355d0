"""Bastion: a Jupyter kernel that releases only what the data owner's policy allows."""

__version__ = "0.1.0"
