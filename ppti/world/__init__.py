"""The toy world: a procedurally drawn image world, its judge, and the small text-to-image model pretrained on it.

This package is data + models, not trainer code: the trainer reads the shipped world (`models/toy-world/`) like any
model folder. `render` draws images and captions, `judge` labels images, `pretrain` builds the world model,
`shipped` locates and hash-checks the committed weights.
"""
