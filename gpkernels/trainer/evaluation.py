"""A run's sample-quality evaluation (the metrics of metrics.py applied to a trainer's generator): exact W1
on the toy sets, the digit classifier's Frechet distance on digits, n-gram JS divergences on text.

An evaluation draws from its own generator (seeded by the run's seed and step: `generator_at`), never from
the training streams, so evaluating more or less often leaves the training itself unchanged.
"""

import torch

from . import metrics
from .config import dataset_group


def generator_at(seed, step):
    """The CPU generator an evaluation of run `seed` at `step` draws from (the seed taken modulo 2^64, so that
    every 64-bit --seed has one)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**64)


class Evaluator:
    """The dataset metric, with its fixed real reference built once per process. Called as
    evaluator(trainer, generator) -> {"w1"} (toy), {"frechet"} (digits) or {"js1".."js4", "samples"} (text).
    `floor` (toy, text) is what two real samples score: the best a generator can hope for."""

    TOY_SAMPLES = 1000
    DIGIT_SAMPLES = 1000
    TEXT_SAMPLES = 1024

    _frechet = None                          # the digit classifier, shared by every trainer of a process

    def __init__(self, dataset, sampler):
        self.group = dataset_group(dataset)
        self.sampler = sampler
        if self.group == "toy":
            # Two real samples of the same size are not at W1 = 0: this is what a perfect generator scores.
            g = torch.Generator().manual_seed(12345)
            self.floor = metrics.w1(sampler.sample(self.TOY_SAMPLES, g).float().cpu(),
                                    sampler.sample(self.TOY_SAMPLES, g).float().cpu())
        elif self.group == "digits":
            if Evaluator._frechet is None:
                s = sampler
                Evaluator._frechet = metrics.DigitsFrechet(s.train, s.train_labels, s.heldout, s.heldout_labels)
            self.frechet = Evaluator._frechet
        elif self.group == "text":
            g = torch.Generator().manual_seed(12345)
            self.reference = sampler.strings(sampler.windows(sampler.heldout_codes, self.TEXT_SAMPLES, g))
            train = sampler.strings(sampler.windows(sampler.train_codes, self.TEXT_SAMPLES, g))
            self.floor = metrics.ngram_js(train, self.reference)

    def __call__(self, trainer, generator):
        if self.group == "toy":
            fake = trainer.generate(self.TOY_SAMPLES, generator)
            real = self.sampler.sample(self.TOY_SAMPLES, generator).float().cpu()
            return dict(w1=metrics.w1(fake, real))
        if self.group == "digits":
            return dict(frechet=self.frechet(trainer.generate(self.DIGIT_SAMPLES, generator)))
        strings = self.sampler.decode(trainer.generate(self.TEXT_SAMPLES, generator))
        return dict(metrics.ngram_js(strings, self.reference), samples=strings[:8])
