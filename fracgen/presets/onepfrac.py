"""1p-frac (Nakamura et al., ECCV 2024): one fractal, L perturbations of its parameters, each its own class.

The base system is drawn by sigma-factor (``fracgen.search``); class k perturbs its maps with its own generator
(``fracgen.perturb``) and is drawn again until its render is finite and fills ``--min-fill``. With C fractals
(``--fractals``) every (fractal, perturbation) pair is a class: label = fractal * L + perturbation. The classes
of a fractal share its map choices, so ``kernels.chaos.render_chains`` renders them LANES at a time, with the bytes
of rendering each alone.
"""

from __future__ import annotations

import numpy as np

from fracgen.errors import UsageError
from fracgen.options import CHAOS_GAME, Option
from fracgen.perturb import MODES
from fracgen.presets.registry import Family, register, render_ahead
from fracgen.raster import raster_text
from fracgen.seeds import CHECK, CLASS, FRESH, choice_uniforms, draw_masks, generator

MAX_MAPS = 1000  # every image records its maps

OWN = (
    Option("sigma", float, 3.5, "Target sigma-factor, 0 < sigma <= 3 x maps (small = complex shapes).",
           search_only=True, label="sigma (sigma-factor of the base system)"),
    Option("maps", int, 2, "Affine maps N per system.", lo=1, hi=MAX_MAPS, why=" (every image records its maps)",
           search_only=True, label="N (affine maps per system)"),
    Option("margin", float, 0.1, "The target is drawn from U(sigma - margin, sigma + margin), as in the released "
           "code.", lo=0, search_only=True),
    Option("perturbation", str, "multiplicative", "multiplicative: theta*(1+u), u~U(-D,D) (released code, the "
           "paper's numbers); additive: theta+eps, eps~U(-D/2,D/2) (paper Eq. 9).", choices=MODES, label="perturbation mode"),
    Option("base_min_fill", float, lambda values: values["min_fill"], "Lit fraction the base fractal's render must "
           "reach [default: --min-fill]; 0 takes the first finite draw, as the released code.", lo=0, hi=1,
           absent_default=True),
)


class OnePFrac(Family):
    name = "1p-frac"
    description = ("1p-frac (Nakamura et al., ECCV 2024): L perturbations of the parameters of each base fractal, "
                   "each perturbation its own class, one image per class.")
    options = CHAOS_GAME | {"sigma", "delta", "L", "maps", "fractals", "perturbation", "margin",
                                 "max_redraws", "patch_variants", "base_min_fill"}
    own_options = OWN
    systems = True
    card_template = "1p-frac.md"
    notes = {"fractals": "C x L classes"}

    def num_classes(self, config) -> int:
        return config.fractals * config.L

    def dataset_name(self, config) -> str:
        head = "1p-frac" if config.fractals == 1 else f"{config.fractals}p-frac"
        variants = "" if config.patch_variants == 1 else f"-aug{config.patch_variants}"  # as OFDB's name
        systems = "params" if config.params_source == "file" else f"sigma{config.sigma}"  # --sigma steered no file
        return f"{head}-{systems}-delta{config.delta}-L{config.L}{variants}"

    def problems(self, config) -> list[str]:
        problems = super().problems(config)
        if not 0 < config.sigma <= 3 * config.maps:
            problems.append(f"--sigma must be in (0, {3 * config.maps}] for {config.maps} maps (sigma <= 3N), got "
                            f"{config.sigma}")
        return problems

    def search(self, config, workers: int, progress: bool) -> list:
        from fracgen.search import search

        return [search(config.sigma, maps=config.maps, seed=config.seed, fractal=f, margin=config.margin,
                       min_fill=config.base_min_fill, size=config.size, points=config.points, style=config.style,
                       max_attempts=config.max_attempts) for f in range(config.fractals)]

    def check_systems(self, systems: list, config) -> None:
        from fracgen.kernels import chaos
        from fracgen.search import judge_systems

        canvas = chaos.Canvas(config.size, config.points)

        def fill(f: int, system) -> float:
            masks = draw_masks(generator(config.seed, CHECK, f), config.points)
            return chaos.render(system.maps, system.probabilities, choice_uniforms(config.seed, f, config.points),
                                masks, canvas.image, canvas.points, config.style)

        judge_systems(systems, fill, config.base_min_fill, "--base-min-fill")

    def render(self, plan, indices: list[int]):
        from fracgen.kernels import chaos

        cfg = plan.config
        canvas = chaos.Canvas(cfg.size, cfg.points)
        batched = cfg.style == "reference" and cfg.patch_variants == 1  # the chains kernel draws that look
        batch = (lambda chunk: _render_chains(plan, chunk)) if batched else (lambda chunk: {})
        return render_ahead(indices, batch, lambda index: _render_one(plan, index, canvas), canvas)

    def render_fresh(self, plan, index: int, key: tuple[int, ...], record: dict) -> np.ndarray:
        from fracgen.kernels import chaos

        cfg = plan.config
        if cfg.style != "reference":
            raise UsageError("--style points draws no patch masks to draw afresh")
        base = plan.systems[record["fractal"]]
        canvas = chaos.Canvas(cfg.size, cfg.points)
        masks = draw_masks(generator(cfg.seed, FRESH, *key, index), cfg.points)
        chaos.render(np.asarray(record["maps"]), base.probabilities, choice_uniforms(cfg.seed, record["fractal"],
                     cfg.points), masks, canvas.image, canvas.points, cfg.style)
        return canvas.image

    def card_template_for(self, config: dict) -> str | None:
        return self.card_template if config.get("fractals", 1) == 1 else None  # its card tells of one fractal

    def card_text(self, config: dict, params: dict | None) -> dict[str, str]:
        from_file = config.get("params_source") == "file"  # --params: the recorded sigma and maps steered nothing
        sigma = _measured_sigma(params) if from_file else str(config.get("sigma", "?"))
        text = {"differences": "\n".join(f"- {item}" for item in _differences(config)), **_per_class_text(config),
                "sigma": sigma, "N": str(_maps(config, params))}
        if self.card_template_for(config):
            systems = f"params file, sigma {sigma.split(' (')[0]}" if from_file else f"sigma {sigma}"
            text["title"] = (f"1p-frac ({systems}, Delta {config.get('delta')}, L {config.get('L')}"
                             f"{text['variants_title']})")
        return text


def _maps(config: dict, params: dict | None) -> object:
    """N, the maps of the base system: the options' value, or the params file's when it gave the systems."""
    if config.get("params_source") != "file":
        return config.get("maps", "?")
    try:
        return len(params["systems"][0]["maps"])
    except (KeyError, IndexError, TypeError):
        return "?"


def _measured_sigma(params: dict | None) -> str:
    """The sigma-factor a params file records for its systems, as the card shows it (a range for several)."""
    try:
        values = [float(system["sigma"]) for system in params["systems"]]
    except (KeyError, TypeError, ValueError):
        values = []
    if not values:
        return "not recorded (the base systems came from a params file)"
    low, high = min(values), max(values)
    shown = f"{low:.4g}" if low == high else f"{low:.4g} to {high:.4g}"
    return f"{shown} (measured; the base system{'s' if len(values) > 1 else ''} came from a params file)"


def _render_one(plan, index: int, canvas) -> tuple[np.ndarray, dict]:
    """Class ``index // per_class`` alone: perturbations drawn until one renders finite and fills enough."""
    from fracgen import perturb
    from fracgen.kernels import chaos

    cfg = plan.config
    label, variant = divmod(index, cfg.per_class)
    fractal, k = divmod(label, cfg.L)
    base = plan.systems[fractal]
    rng = generator(cfg.seed, CLASS, fractal, k)
    uniforms = choice_uniforms(cfg.seed, fractal, cfg.points)
    for redraws in range(cfg.max_redraws + 1):
        maps = perturb.perturb(base.maps, cfg.delta, cfg.perturbation, rng)
        masks = draw_masks(rng, cfg.points) if cfg.style == "reference" else None
        fill = chaos.render(maps, base.probabilities, uniforms, masks, canvas.image, canvas.points, cfg.style)
        if fill >= cfg.min_fill:
            meta = {"label": label, "fractal": fractal, "perturbation": k, "maps": maps.tolist(),
                    "redraws": redraws, "fill": fill}
            if cfg.patch_variants == 1:
                return canvas.image, meta
            if variant > 0:  # the class's points, fresh masks; the fill may differ a little from variant 0's
                masks = draw_masks(generator(cfg.seed, CLASS, fractal, k, variant), cfg.points)
                meta["fill"] = chaos.render(maps, base.probabilities, uniforms, masks, canvas.image, canvas.points,
                                            cfg.style)
            return canvas.image, dict(meta, variant=variant)
    raise UsageError(
        f"class {label} (fractal {fractal}, perturbation {k}): no perturbation with a finite chaos game and fill "
        f">= {cfg.min_fill} in {cfg.max_redraws + 1} draws; lower --delta or --min-fill"
    )


def _render_chains(plan, indices: list[int]) -> dict[int, tuple[np.ndarray, dict]]:
    """Classes rendered fractal by fractal, their chains sharing the fractal's map choices
    (``perturb.render_perturbations``); a class with no accepted draw is left to the one-image path, which
    redraws it alone and names it. One image per class, so sample index = label."""
    from fracgen import perturb
    from fracgen.kernels import chaos

    cfg = plan.config
    by_fractal: dict[int, list[int]] = {}
    for label in sorted(indices):
        by_fractal.setdefault(label // cfg.L, []).append(label)
    ready = {}
    for fractal, labels in by_fractal.items():
        base = plan.systems[fractal]
        if len(base.maps) > chaos.MAX_CHAIN_MAPS:
            continue  # map choices are bytes: left to the one-image path
        rngs = [generator(cfg.seed, CLASS, fractal, label % cfg.L) for label in labels]
        done = perturb.render_perturbations(
            base.maps, base.probabilities, choice_uniforms(cfg.seed, fractal, cfg.points), rngs, delta=cfg.delta,
            mode=cfg.perturbation, points=cfg.points, size=cfg.size, min_fill=cfg.min_fill,
            max_redraws=cfg.max_redraws)
        for label, result in zip(labels, done, strict=True):
            if not isinstance(result, int):
                bits, maps, redraws, fill = result
                ready[label] = (bits, {"label": label, "fractal": fractal, "perturbation": label % cfg.L,
                                       "maps": maps.tolist(), "redraws": redraws, "fill": fill})
    return ready


def _per_class_text(config: dict) -> dict[str, str]:
    """The 1p-frac card's words for a class's images: one, or K patch variants (``--patch-variants``)."""
    k = config.get("patch_variants", 1)
    if not isinstance(k, int) or k <= 1:
        return {"per_class": "one image per perturbation", "variant_field": "", "variants_title": ""}
    return {"per_class": f"{k} images per class (the same points under freshly drawn 3 x 3 patch masks, the "
            "paper's Table 13 \"w/ Aug.\")", "variants_title": f", {k} patch variants",
            "variant_field": ", and `variant`, which of the class's patch-mask draws the image is"}


def _perturbation_text(config: dict) -> str:
    mode = config.get("perturbation", "multiplicative")
    delta = config.get("delta", "Delta")
    if mode == "multiplicative":
        return (f"**Perturbation: multiplicative, as in the released code**: theta' = theta * (1 + u), "
                f"u ~ U(-{delta}, {delta}) for each of the 6 parameters of each map. The paper's Eq. 9 writes an "
                f"additive eps ~ U[-Delta/2, Delta/2]^(6N) instead.")
    if mode == "additive":
        return (f"**Perturbation: additive, as in the paper's Eq. 9**: theta' = theta + eps, "
                f"eps ~ U[-{delta}/2, {delta}/2]^(6N). The released code, which produced the paper's numbers, "
                "multiplies instead: theta' = theta * (1 + u), u ~ U(-Delta, Delta).")
    return f"**Perturbation: {mode}** (neither the paper's additive Eq. 9 nor the released multiplicative rule)."


def _differences(config: dict) -> list[str]:
    points = config.get("points", "?")
    from_file = config.get("params_source") == "file"
    margin = config.get("margin", 0.1)
    return [
        _perturbation_text(config),
        "**Map probabilities** p_i = |det A_i| / sum_j |det A_j| of the base maps, not recomputed after "
        "perturbation, as the released code computes them.",
        f"**Chaos game**: {points} points from (0, 0), no burn-in, the same map-choice sequence for every class of "
        "a fractal (released code: 100,000 points, same rules).",
        raster_text(config),
        f"**Image size** {config.get('size', '?')} px (released: 512).",
        "**Base systems** read from a params file (`--params`, copied as params.json with their measured "
        "sigma-factors), not searched: the search options (sigma, margin, N) steered nothing." if from_file
        else f"**sigma target** drawn from U(sigma - {margin}, sigma + {margin}) for the base system, with N = "
        f"{config.get('maps', 2)} maps sampled as in Anderson & Farrell (released: margin 0.1, N = 2).",
        f"**Fill check**: at least {config.get('min_fill', 0.05)} of the pixels lit, else the perturbation is "
        f"drawn again, at most {config.get('max_redraws', '?')} times (released: 5%, no limit, so a bad base "
        "fractal loops forever).",
        "**Seeds and records**: every draw comes from a generator seeded by (seed, fractal, perturbation), and the "
        "base system and every class's parameters are saved in `params.json` (released code: no seeds, nothing "
        "saved, class folders named '%02d' so their order differs from the label).",
    ]


register(OnePFrac())
