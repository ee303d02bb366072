"""The dataset families, one module each, and their registry (``fracgen.presets.registry``).

- ``onepfrac``: 1p-frac (one fractal, L perturbation classes; C fractals give C x L).
- ``fractaldb``: FractalDB (categories x instances) and OFDB (one image per category) with their category search.
- ``ofdb3d``: 3D-OFDB (3D fractal categories found by a variance search, each drawn from V views).
- ``contours``: RCDB and VisualAtom (categories x instances) and their LPCE forms (one base image, L classes).
- ``noise``: the Gaussian and uniform noise baselines.
- ``real``: one real image perturbed in its geometry (``fracgen build-real``).

Importing this package registers them; it imports no numba.
"""

from fracgen.presets.registry import IMAGE_MODES, Family, families, get, option_table, register

DEFAULT_PRESET = "1p-frac"

# isort: off
# registered in this order: the order of --preset's choices
from fracgen.presets import onepfrac, fractaldb, ofdb3d, contours, noise, real  # noqa: E402,F401
# isort: on

__all__ = ["DEFAULT_PRESET", "IMAGE_MODES", "Family", "families", "get", "option_table", "register"]
