"""numba kernels: the chaos game and rasters, the FractalDB acceptance test, the contour drawing, patch masks and
deflate. No I/O and no global random state: every random number arrives as an argument. Importing one compiles
or loads its kernels (numba's cache; the first run compiles them, a few seconds)."""
