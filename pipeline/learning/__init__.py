"""Learning a kernel from (input, target) image pairs: the numerics that run on NumPy blocks.

* ``tiles`` — how a tile is read so that the tiles of an image add up to exactly the image;
* ``normal_equations`` — the least-squares parts ``X^T X``, ``X^T y`` of a tile, without a design
  matrix, summed over tiles by a tree reduction;
* ``solve`` — the kernel from the summed parts, with its condition, rank and fit quality;
* ``gradient`` — loss and gradient of a correlation layer with an activation, and optimizers, for
  what least squares cannot fit (an activation after the correlation);
* ``correlation`` — the FFT correlation engine the others share.

Weights are ``(outputs, channels, *kernel)`` correlation weights, PyTorch's Conv layout.
"""

from pipeline.learning.gradient import SGD, Adam, LossGradient, init_weights, loss_and_gradient
from pipeline.learning.normal_equations import NormalParts, accumulate
from pipeline.learning.solve import Solution, solve
from pipeline.learning.tiles import TileWindow, tile_window

__all__ = [
    "SGD",
    "Adam",
    "LossGradient",
    "NormalParts",
    "Solution",
    "TileWindow",
    "accumulate",
    "init_weights",
    "loss_and_gradient",
    "solve",
    "tile_window",
]
