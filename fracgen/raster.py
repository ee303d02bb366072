"""The raster's constants, numba-free: what the options' checks, the numba kernels and the plain-numpy restatement
share."""

STYLES = ("reference", "points")  # reference: the released 1p-frac look; points: one pixel per point
PAD = 6  # the released margin: x and y land in [PAD, size - PAD]
VALUE = 127  # the released grey level of a lit pixel
MIN_SIZE = 2 * PAD + 4  # the smallest image that leaves the margins and a patch
