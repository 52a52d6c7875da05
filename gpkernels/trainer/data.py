"""The training sets, all generated or read offline.

Every sampler draws from a `torch.Generator` that the trainer owns and checkpoints, so a resumed run sees
the same batches as an uninterrupted one.

    toy sets      (B, 2)        float, the 2-D sets of Gulrajani et al. (2017), section 5.1
    digits        (B, 1, 8, 8)  float in [-1, 1], scikit-learn's 8x8 handwritten digits (1,797 images)
    text          (B, V, L)     one-hot characters, channels first (V = vocabulary size, L = 32)
"""

import math
import re
import unicodedata

import torch

TOY = ("8gaussians", "25gaussians", "swissroll")
DATASETS = TOY + ("digits", "text")


# ------------------------------------------------------------------------------------------- toy sets

def _eight_centres():
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)          # on a circle of radius 2


def _twentyfive_centres():
    grid = torch.arange(-2, 3, dtype=torch.float64) * 2.0                   # -4, -2, 0, 2, 4
    return torch.cartesian_prod(grid, grid)


class ToySampler:
    """Samples (B, 2) of a toy set, scaled as in the WGAN-GP toy experiments.

    8gaussians: 8 modes on a circle of radius 2, std 0.02 each, divided by 1.414.
    25gaussians: a 5x5 grid of modes 2 apart, std 0.05, divided by 2.828.
    swissroll: sklearn's make_swiss_roll formula in 2-D (t ~ 1.5 pi (1 + 2 U), noise 0.25), divided by 7.5.
    """

    def __init__(self, name, dtype=torch.float32, device="cpu"):
        if name not in TOY:
            raise ValueError(f"unknown toy set {name!r}; choose one of {', '.join(TOY)}")
        self.name, self.dtype, self.device = name, dtype, torch.device(device)

    def sample(self, batch, generator):
        """(batch, 2) samples drawn on the CPU from `generator` (then moved to the device)."""
        if self.name == "8gaussians":
            centres = _eight_centres()
            pick = torch.randint(0, 8, (batch,), generator=generator)
            x = (centres[pick] + 0.02 * torch.randn(batch, 2, generator=generator, dtype=torch.float64)) / 1.414
        elif self.name == "25gaussians":
            centres = _twentyfive_centres()
            pick = torch.randint(0, 25, (batch,), generator=generator)
            x = (centres[pick] + 0.05 * torch.randn(batch, 2, generator=generator, dtype=torch.float64)) / 2.828
        else:
            t = 1.5 * math.pi * (1 + 2 * torch.rand(batch, generator=generator, dtype=torch.float64))
            x = torch.stack([t * t.cos(), t * t.sin()], dim=1)
            x = (x + 0.25 * torch.randn(batch, 2, generator=generator, dtype=torch.float64)) / 7.5
        return x.to(self.device, self.dtype)


# --------------------------------------------------------------------------------------------- digits

def load_digits_split(holdout=360, seed=0):
    """scikit-learn's digits as ((N_train, 1, 8, 8), (N_train,)), ((holdout, 1, 8, 8), (holdout,)),
    float64 in [-1, 1]; the split is a fixed permutation (seed) so every run holds out the same images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:      # pragma: no cover - a dependency of the trainer
        raise RuntimeError("the digits set needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).to(torch.float64) / 8.0 - 1.0          # 0..16 -> -1..1
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order].unsqueeze(1), labels[order]
    return (images[holdout:], labels[holdout:]), (images[:holdout], labels[:holdout])


class DigitsSampler:
    """Minibatches (B, 1, 8, 8) of the training split, drawn with replacement."""

    def __init__(self, dtype=torch.float32, device="cpu"):
        (self.train, self.train_labels), (self.heldout, self.heldout_labels) = load_digits_split()
        self.dtype, self.device = dtype, torch.device(device)

    def sample(self, batch, generator):
        pick = torch.randint(0, len(self.train), (batch,), generator=generator)
        return self.train[pick].to(self.device, self.dtype)


# ----------------------------------------------------------------------------------------------- text

SEQ_LEN = 32
# Lower-case letters, digits, space and common punctuation; anything else is dropped.
ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()[]{}<>=+-*/_%#@&|\\~^$`"


def python_corpus():
    """English prose that ships with every CPython: the reference-manual topics that `help()` shows
    (pydoc_data.topics, about 465,000 characters), so the text set needs no download."""
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))


def clean_text(text):
    """Lower case, ASCII, reStructuredText rules (---, ***, ===) removed, whitespace runs -> one space,
    characters outside ALPHABET dropped."""
    text = unicodedata.normalize("NFKD", text)
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2014", "-"),
                 ("\u2013", "-"), ("\u2026", "...")):
        text = text.replace(a, b)
    text = text.lower()
    text = re.sub(r"([-=*~^#_])\1{2,}", " ", text)
    text = re.sub(r"\s+", " ", text)
    allowed = set(ALPHABET)
    return "".join(c for c in text if c in allowed).strip()


class TextSampler:
    """Windows of SEQ_LEN characters cut at random offsets: the first 90% of the cleaned corpus trains,
    the last 10% is held out for the n-gram metric.

    sample() -> (B, V, L) one-hot float; `decode` turns (B, V, L) scores or probabilities into strings by
    argmax over V.
    """

    def __init__(self, text=None, dtype=torch.float32, device="cpu", seq_len=SEQ_LEN):
        raw = python_corpus() if text is None else text
        corpus = clean_text(raw)
        if len(corpus) < 20 * seq_len:
            raise ValueError(f"the text corpus has {len(corpus)} usable characters after cleaning; at least "
                             f"{20 * seq_len} are needed (lower-case ASCII letters, digits, punctuation)")
        self.vocab = sorted(set(corpus))
        self.index = {c: i for i, c in enumerate(self.vocab)}
        codes = torch.tensor([self.index[c] for c in corpus], dtype=torch.long)
        cut = int(0.9 * len(codes))
        self.train_codes, self.heldout_codes = codes[:cut], codes[cut:]
        self.seq_len, self.dtype, self.device = seq_len, dtype, torch.device(device)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def windows(self, codes, batch, generator):
        """(batch, L) character codes of random windows of `codes`."""
        start = torch.randint(0, len(codes) - self.seq_len, (batch,), generator=generator)
        return codes[start.unsqueeze(1) + torch.arange(self.seq_len)]

    def one_hot(self, codes):
        return torch.nn.functional.one_hot(codes, self.vocab_size).transpose(1, 2).to(self.device, self.dtype)

    def sample(self, batch, generator):
        return self.one_hot(self.windows(self.train_codes, batch, generator))

    def decode(self, x):
        codes = x.argmax(dim=1).cpu()
        return ["".join(self.vocab[i] for i in row) for row in codes.tolist()]

    def strings(self, codes):
        return ["".join(self.vocab[i] for i in row) for row in codes.tolist()]


def read_text_file(path):
    """The text of a UTF-8 file (a leading byte-order mark dropped). ValueError naming the byte offset of the
    first byte that is not UTF-8: a file in another encoding is refused, not decoded into replacement
    characters."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: the byte 0x{raw[e.start]:02x} at offset {e.start} is not valid UTF-8 "
                         f"({e.reason}); convert the file, e.g. iconv -f latin1 -t utf-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def make_sampler(name, dtype=torch.float32, device="cpu", text_file=None):
    if name in TOY:
        return ToySampler(name, dtype, device)
    if name == "digits":
        return DigitsSampler(dtype, device)
    if name == "text":
        text = None if text_file is None else read_text_file(text_file)
        return TextSampler(text, dtype, device)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
