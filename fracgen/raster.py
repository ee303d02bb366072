"""The raster's constants, numba-free, which the options' checks, the numba kernels and the plain-numpy restatement
share; and what the dataset card says of a raster style."""

STYLES = ("reference", "points")  # reference: the released look (3 x 3 patches); points: one pixel per point
PAD = 6  # the released margin: x and y land in [PAD, size - PAD]
VALUE = 127  # the released grey level of a lit pixel
MIN_SIZE = 2 * PAD + 4  # the smallest image that leaves the margins and a patch


def raster_text(config: dict) -> str:
    """What the dataset card says of a build's raster style (``config``: its recorded options)."""
    style = config.get("style", "reference")
    if style == "reference":
        return ("**Raster: the released look**: x and y scaled independently to [6, size - 6] (aspect not kept), "
                "truncated, a 3 x 3 patch with a random 9-bit mask of value 127 pasted at each point, then flipped top "
                "to bottom. Stored as an 8-bit greyscale PNG with values {0, 127} rather than the released RGB PNG with "
                "equal channels (same pixel values in every decoder).")
    return (f"**Raster: `{style}`**, not the released look (which pastes 3 x 3 random patches and stretches x and y "
            "independently); see fracgen's chaos-game kernels.")
