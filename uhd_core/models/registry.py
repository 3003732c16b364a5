"""Registries of backbones (keyed by --arch)."""

from uhd_core.registry import Registry

BACKBONES: Registry = Registry("architecture (--arch)")
