"""Layers shared by backbones and heads (the floor below both, as timm's ``layers/``).

Nothing here knows about configs, registries, heads or families: plain ``nn.Module`` building
blocks a backbone or a head composes.
"""
