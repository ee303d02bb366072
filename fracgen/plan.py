"""The plan of a build: pure data computed once in the parent, which the shard workers only execute.

It holds the resolved options, the base systems (searched, or read from a params file and checked by
rendering them once here) and which samples go in which shard, in an order drawn from the build's seed. So
the bytes of a shard do not depend on the worker count, the shard range or the order shards finish in.
Importing this module does not import numba; planning a family with base systems does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from fracgen.config import BuildConfig
from fracgen.errors import UsageError
from fracgen.seeds import ORDER, generator
from fracgen.systems import System


@dataclass
class Plan:
    """What a build makes: the base systems and the samples of every shard (pure data, picklable).

    Attributes:
        config: the resolved options.
        systems: base systems (fractal presets).
        shard_samples: sample indices of every shard, sorted; label = index // per_class.
        source: real-image preset: the path the source image is read from.
        digest: sha256 of the options and base systems, recorded in every shard's marker (see __post_init__).
    """

    config: BuildConfig
    systems: list[System]
    shard_samples: list[list[int]] = field(default_factory=list)
    source: str = ""
    prepared: list = field(default_factory=list)

    digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # sha256 of what decides every shard's bytes besides its index: the options and the base systems. Each
        # shard's marker records it, so a resume keeps only shards made by this plan (a shard copied in from a
        # job with other options or other systems is built again). Computed once, before the plan goes to workers.
        decided = {"config": self.config.to_json(), "systems": [s.to_json() for s in self.systems]}
        text = json.dumps(decided | ({"prepared": self.prepared} if self.prepared else {}), sort_keys=True)
        self.digest = hashlib.sha256(text.encode()).hexdigest()


def make_plan(config: BuildConfig, systems: list[System] | None = None, source: str = "",
              accepted: bool = False, *, workers: int = 1, progress: bool = False) -> Plan:
    """Search the base systems (or check the given ones) and spread the samples across shards in a seeded order.

    Args:
        config: a validated configuration.
        systems: base systems read from a params file, one per fractal; each must render finite and fill
            ``min_fill`` under this config.
        source: real-image preset: where to read the source image.
        accepted: ``systems`` are the ones this build stored when it accepted them (a resume): not judged again,
            since a fill near ``min_fill`` may fall either side under the check's own draws.
        workers: processes for a search that runs in parallel (FractalDB/OFDB categories); no effect on the result.
        progress: show the search's progress bar.

    Returns:
        The plan. Samples are numbered in label order; shards hold them sorted.

    Raises:
        UsageError: the search finds nothing acceptable, or a given system is refused or miscounted.
    """
    family = config.family
    if family.systems:
        if systems is None:
            systems = family.search(config, workers, progress)
        elif not accepted:
            family.check_systems(systems, config)
    elif systems is None:
        systems = []
    expected = config.fractals if family.systems else 0
    if len(systems) != expected:
        raise UsageError(f"--params holds {len(systems)} systems but --fractals is {config.fractals}")
    order = generator(config.seed, ORDER).permutation(config.num_samples)
    chunks = [
        sorted(order[i : i + config.shard_size].tolist()) for i in range(0, len(order), config.shard_size)
    ]
    return Plan(config=config, systems=systems, shard_samples=chunks, source=source,
                prepared=family.prepare(config, workers, progress))
