"""Sample-quality metrics of the reference trainer, computed offline.

    toy      w1(x, y): exact Wasserstein-1 between two point clouds (POT's network-simplex solver)
    digits   DigitsFrechet: Frechet distance of a small digit classifier's features against held-out digits
    text     ngram_js(samples, reference, n): Jensen-Shannon divergence (base 2, in [0, 1]) of character
             n-gram distributions
"""

import collections
import math
import os
import pathlib

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


# ------------------------------------------------------------------------------------------------- W1

def w1(x, y):
    """Exact W1 (Euclidean ground cost) between the empirical distributions of x (N, d) and y (M, d),
    uniform weights. O(N M) memory; 1,000 x 1,000 takes a fraction of a second."""
    try:
        import ot
    except ImportError as e:      # pragma: no cover - a dependency of the trainer
        raise RuntimeError("the toy metric needs POT: pip install pot") from e
    x = x.detach().double().cpu().numpy()
    y = y.detach().double().cpu().numpy()
    cost = ot.dist(x, y, metric="euclidean")
    return float(ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), cost, numItermax=10**7))


# ------------------------------------------------------------------------------------------- Frechet

class DigitClassifier(nn.Module):
    """(B, 1, 8, 8) -> (B, 10) logits; `features` gives the (B, 128) penultimate activations."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 128)
        self.head = nn.Linear(128, 10)

    def features(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def cache_dir():
    """$GPKERNELS_CACHE, else $XDG_CACHE_HOME/gpkernels, else ~/.cache/gpkernels."""
    if os.environ.get("GPKERNELS_CACHE"):
        return pathlib.Path(os.environ["GPKERNELS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "gpkernels"


CLASSIFIER_VERSION = 1


def train_digit_classifier(train, labels, epochs=30, seed=0):
    """A DigitClassifier trained with Adam on (N, 1, 8, 8) float images, deterministic for a seed (about
    ten seconds on two CPU cores)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitClassifier()
    x, y = train.float(), labels
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            # Small shifts make the features less brittle to a generator's slightly-off images.
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()
            batch = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def frechet_distance(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of (N, k) and (M, k) feature sets, float64.
    The trace of the matrix square root is taken from the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which are
    those of S_a S_b but come from a symmetric matrix. Rounding below zero is returned as 0."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(s_a)
    root_a = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    middle = root_a @ s_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * trace_root)
    return max(value, 0.0)       # rounding can leave -1e-6 for equal sets; the distance itself is >= 0


class DigitsFrechet:
    """The digits metric: Frechet distance between the classifier features of generated images and of the
    held-out real digits. The classifier is trained once and cached (cache_dir()/digit_classifier.pt);
    `accuracy` is its held-out accuracy and `floor` the distance of the training split to the held-out
    split (what a perfect generator would score, give or take sampling noise)."""

    def __init__(self, train, train_labels, heldout, heldout_labels):
        path = cache_dir() / f"digit_classifier_v{CLASSIFIER_VERSION}.pt"
        model = DigitClassifier()
        loaded = False
        if path.exists():
            try:
                model.load_state_dict(torch.load(path, weights_only=True))
                loaded = True
            except Exception:         # a corrupt or foreign cache file: train again and overwrite it
                loaded = False
        if not loaded:
            model = train_digit_classifier(train, train_labels)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
        self.model = model.eval()
        with torch.no_grad():
            self.accuracy = float((self.model(heldout.float()).argmax(1) == heldout_labels).float().mean())
            self.reference = self.features(heldout)
            self.floor = frechet_distance(self.features(train), self.reference)

    def features(self, images):
        with torch.no_grad():
            return self.model.features(images.detach().float().cpu())

    def __call__(self, images):
        return frechet_distance(self.features(images), self.reference)


# ------------------------------------------------------------------------------------------- n-grams

def ngram_counts(strings, n):
    counts = collections.Counter()
    for s in strings:
        counts.update(s[i:i + n] for i in range(len(s) - n + 1))
    return counts


def js_divergence(p_counts, q_counts):
    """Jensen-Shannon divergence in bits (0 for equal distributions, 1 for disjoint supports) of two count
    tables, each normalised to a distribution."""
    p_total, q_total = sum(p_counts.values()), sum(q_counts.values())
    if p_total == 0 or q_total == 0:
        return math.nan
    js = 0.0
    for key in set(p_counts) | set(q_counts):
        p = p_counts.get(key, 0) / p_total
        q = q_counts.get(key, 0) / q_total
        m = (p + q) / 2
        if p > 0:
            js += 0.5 * p * math.log2(p / m)
        if q > 0:
            js += 0.5 * q * math.log2(q / m)
    return js


def ngram_js(samples, reference, orders=(1, 2, 3, 4)):
    """{f"js{n}": JS divergence of the character n-gram distributions} of two lists of strings."""
    return {f"js{n}": js_divergence(ngram_counts(samples, n), ngram_counts(reference, n)) for n in orders}
