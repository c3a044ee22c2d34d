"""Bits-back coding with the book's rANS: the flow posterior's rate, for real.

Backs the section *Bits-back, for real* of the chapter *Beyond*. Follows
Frey & Hinton (1997) and Hinton & van Camp (1993) (bits back), Townsend,
Bird & Barber (2019) (BB-ANS: bits-back on an ANS stack, latents on a fine
grid) and Duda (2013) (ANS).

A posterior that is not a unit box has rate ``KL(q || p) = E_q[log q - log
p]``, and only a code that gets the ``-log q`` bits back achieves it. Per
data point ``x`` (on a grid of width ``x_step``), on one rANS stack:

1. **pop** a latent ``z ~ Q(.|x)`` by *decoding* the stack with the
   posterior's table: the stack shrinks by ``-log2 Q(z|x)`` bits;
2. **push** ``x`` with the likelihood ``P(x|z)`` (a Gaussian of variance
   ``1 / (2 lmbda ln 2)``, chapter 1's emission);
3. **push** ``z`` with the prior ``P(z)``.

The net growth is ``-log2 P(z) - log2 P(x|z) + log2 Q(z|x)``, the free energy
of the latent-variable model (on the grids). The decoder runs the steps
backwards and in reverse (pop ``z`` with the prior, pop ``x``, push ``z``
with the posterior, now computable because ``x`` is known) and ends with
the stack it started from: the initial bits come back too.

:class:`AnsStack` is :mod:`dvae_tutorial.rans` made stateful (the same state
interval, word size and update rule; a test checks that its words equal
``rans.encode``'s): bits-back needs to decode *before* anything was encoded,
which the batch functions of ``rans`` cannot do. When the stack runs dry it
draws fresh words from a seeded random tape: the *initial bits* a single
message must pay for.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import log_ndtr, ndtr

from . import rans
from .distributions import SCALE_LOWER_BOUND
from .flows import FlowCodec

#: cdf precision of the tables. After renormalisation a push sees a state
#: ``x >= 2**(32 - P) * freq``, and ``x' = floor(x / f) 2**P + x mod f + c`` lies
#: within a factor ``1 -+ f / x`` of ``x 2**P / f``: one push (or the pop that
#: undoes it) misses its ideal length ``-log2(freq / 2**P)`` by at most
#: ``-log2(1 - 2**(P - 32))`` bits.
PRECISION = 24
#: Largest error of one push or pop against its ideal length (see above).
OP_SLACK_BITS = -math.log2(1.0 - 2.0 ** (PRECISION - rans.WORD_BITS))
_WORD_MASK = (1 << rans.WORD_BITS) - 1


class AnsStack:
    """A rANS stack: state ``x`` in ``[2**32, 2**64)`` plus a list of 32-bit words.

    :meth:`push` encodes one symbol, :meth:`pop` decodes one; each undoes the
    other exactly. ``tape`` supplies random words when a pop finds the stack
    empty (counted in :attr:`tape_used`); ``state`` starts the stack (default:
    64 random bits from the tape's generator, the clean bits that make the
    first pop a true sample).

    See: *Beyond* (bits-back, for real).
    """

    def __init__(self, seed: int = 0, state: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        if state is None:  # 64 random bits, top bit set: a state in range
            hi, lo = (int(w) for w in self.rng.integers(0, 1 << 32, 2))
            state = (1 << 63) | (hi << 32) | lo
        if not rans.STATE_LOWER <= state < rans.STATE_LOWER << rans.WORD_BITS:
            raise ValueError(f"rANS state {state} out of range")
        self.state, self.words, self.tape, self.tape_used = state, [], [], 0
        self.initial_state = state
        #: Sum of the ideal lengths ``-log2(freq / 2**P)`` pushed minus popped,
        #: and the number of operations (each within OP_SLACK_BITS of ideal).
        self.ideal_bits, self.ops = 0.0, 0

    def push(self, start: int, freq: int) -> None:
        """Encode the symbol owning ``[start, start + freq)`` of ``2**PRECISION``."""
        self.ideal_bits += PRECISION - math.log2(freq)
        self.ops += 1
        x = self.state
        if x >= ((rans.STATE_LOWER >> PRECISION) << rans.WORD_BITS) * freq:
            self.words.append(x & _WORD_MASK)
            x >>= rans.WORD_BITS
        self.state = ((x // freq) << PRECISION) + (x % freq) + start

    def pop(self, cdf: np.ndarray) -> int:
        """Decode one symbol with the integer ``cdf`` (int64, ``cdf[-1] = 2**P``)."""
        x = self.state
        slot = x & ((1 << PRECISION) - 1)
        s = int(np.searchsorted(cdf, slot, side="right")) - 1
        start, freq = int(cdf[s]), int(cdf[s + 1] - cdf[s])
        self.ideal_bits -= PRECISION - math.log2(freq)
        self.ops += 1
        x = freq * (x >> PRECISION) + slot - start
        if x < rans.STATE_LOWER:
            x = (x << rans.WORD_BITS) | self._next_word()
        self.state = x
        return s

    def _next_word(self) -> int:
        if self.words:
            return self.words.pop()
        self.tape_used += 1
        self.tape.append(int(self.rng.integers(0, 1 << 32)))
        return self.tape[-1]

    def content_bits(self) -> float:
        """Length of the message on the stack, ``log2 x + 32 (words - tape words)``.

        Continuous through renormalisations; a push adds ``-log2 p`` bits, a
        pop removes them (to within :data:`OP_SLACK_BITS`).
        """
        return math.log2(self.state) + rans.WORD_BITS * (len(self.words) - self.tape_used)

    def file_bits(self) -> int:
        """Size of the file: the final state (64 bits) plus the words."""
        return 2 * rans.WORD_BITS + rans.WORD_BITS * len(self.words)

    def initial_bits(self) -> int:
        """Random bits the coding consumed: the initial state and the tape words."""
        return 2 * rans.WORD_BITS + rans.WORD_BITS * self.tape_used


def leaky_cdf(cdf_at_edges: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Integer cdf of ``n`` bins from a float cdf at their ``n + 1`` edges.

    ``C_k = floor(F_k (2**P - n)) + k`` with ``F`` rescaled to run from 0 to
    1: every bin gets frequency >= 1 (any bin can be coded, the "leak"), the
    total is exactly ``2**P``, and ``C`` is non-decreasing because float
    rounding is monotone. The leak costs at most ``-log2(1 - n / 2**P)`` bits
    per symbol.
    """
    f = np.asarray(cdf_at_edges, dtype=np.float64)
    n = f.shape[-1] - 1
    if n >= 1 << precision:
        raise ValueError(f"{n} bins do not fit a {precision}-bit cdf")
    if not f[-1] > f[0]:  # no mass on the grid at all: code uniformly
        f = np.arange(n + 1, dtype=np.float64)
    f = (f - f[0]) / (f[-1] - f[0])
    return np.floor(f * ((1 << precision) - n)).astype(np.int64) + np.arange(n + 1)


@dataclass(frozen=True)
class Grid:
    """``n`` bins of width ``step`` starting at ``lo``; bin ``k`` is centred at
    ``lo + (k + 1/2) step``."""

    lo: float
    step: float
    n: int

    def edges(self) -> np.ndarray:
        return self.lo + self.step * np.arange(self.n + 1)

    def centre(self, k):
        return self.lo + self.step * (np.asarray(k) + 0.5)

    def index(self, v) -> np.ndarray:
        """Bin of each value, clipped into the grid."""
        k = np.floor((np.asarray(v, dtype=np.float64) - self.lo) / self.step)
        return np.clip(k, 0, self.n - 1).astype(np.int64)


def _psi(t: np.ndarray) -> np.ndarray:
    """``t Phi(t) + phi(t)``, an antiderivative of the Gaussian cdf."""
    return t * ndtr(t) + np.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)


class BitsBackCoder:
    """BB-ANS for the toy :class:`~dvae_tutorial.flows.FlowCodec` at ``lmbda``.

    Latent grid: width ``z_step``, covering the prior's mean ± (1/2 + 10
    scales) per dimension; data grid: width ``x_step`` on ``[-x_range,
    x_range]``. The codec is copied in float64 so encoder and decoder compute
    bit-identical tables. Data are given as grid indices (``x_index``).

    See: *Beyond* (bits-back, for real).
    """

    def __init__(self, codec: FlowCodec, lmbda: float, z_step: float = 1 / 64,
                 x_step: float = 1 / 256, x_range: float = 6.0) -> None:
        self.codec = copy.deepcopy(codec).double().eval()
        q = self.codec.quantizer
        self.mean = q.prior_mean.detach().numpy()
        self.scale = np.maximum(q.prior_log_scale.detach().exp().numpy(),
                                SCALE_LOWER_BOUND)
        self.lmbda, self.sigma_x = lmbda, math.sqrt(1 / (2 * lmbda * math.log(2)))
        self.dim = len(self.mean)
        self.x_grid = Grid(-x_range, x_step, round(2 * x_range / x_step))
        half = 0.5 + 10 * self.scale
        lo = np.floor((self.mean - half) / z_step) * z_step
        self.z_grids = [Grid(float(lo[i]), z_step, int(math.ceil(2 * half[i] / z_step)))
                        for i in range(self.dim)]
        self.prior_cdfs = [leaky_cdf(self._prior_cdf(i, g.edges()))
                           for i, g in enumerate(self.z_grids)]

    def _prior_cdf(self, i: int, e: np.ndarray) -> np.ndarray:
        """cdf of the prior density ``p_hat`` (Gaussian convolved with the box)."""
        m, s = self.mean[i], self.scale[i]
        return s * (_psi((e + 0.5 - m) / s) - _psi((e - 0.5 - m) / s))

    @torch.no_grad()
    def posterior_cdfs(self, x_index: np.ndarray) -> list[np.ndarray]:
        """Integer cdfs of ``Q(z_i | x)`` on each latent grid."""
        x = torch.from_numpy(self.x_grid.centre(x_index))[None]
        y = self.codec.quantizer.encoder(x)[0]
        out = []
        for i, g in enumerate(self.z_grids):
            offsets = torch.zeros(g.n + 1, self.dim, dtype=torch.float64)
            offsets[:, i] = torch.from_numpy(g.edges()) - y[i]
            u = self.codec.flow.inverse(offsets)[:, i].numpy()
            out.append(leaky_cdf(u + 0.5))
        return out

    @torch.no_grad()
    def likelihood_mean(self, z_index: np.ndarray) -> np.ndarray:
        z = np.array([g.centre(k) for g, k in zip(self.z_grids, z_index, strict=True)])
        return self.codec.quantizer.decoder(torch.from_numpy(z)[None])[0].numpy()

    def likelihood_cdf(self, x_mean: float, edges: np.ndarray) -> np.ndarray:
        """Gaussian cdf at ``edges``, rescaled to run from 0 at ``edges[0]`` to 1
        at ``edges[-1]``; computed in log space on the tail away from the mean,
        so a mean far outside the grid (a badly chosen latent) still gives a
        valid table. Elementwise apart from the two end edges, so the 4-edge
        call of :meth:`_x_interval` equals the full table's entries."""
        t = (edges - x_mean) / self.sigma_x
        middle = self.x_grid.lo + 0.5 * self.x_grid.n * self.x_grid.step
        if x_mean >= middle:  # the grid lies mostly left of the mean
            log_f = log_ndtr(t)
            a = np.exp(log_f - log_f[-1])
            return (a - a[0]) / (1 - a[0])
        log_s = log_ndtr(-t)  # survival function, from the right end
        b = np.exp(log_s - log_s[0])
        return 1 - (b - b[-1]) / (1 - b[-1])

    def _x_interval(self, x_mean: float, k: int) -> tuple[int, int]:
        """``(start, freq)`` of data bin ``k``: the cdf at 4 edges suffices."""
        g = self.x_grid
        e = np.array([g.lo, g.lo + k * g.step, g.lo + (k + 1) * g.step,
                      g.lo + g.n * g.step])
        f = self.likelihood_cdf(x_mean, e)
        n, m = g.n, (1 << PRECISION) - g.n
        c0 = int(np.floor(f[1] * m)) + k
        c1 = int(np.floor(f[2] * m)) + k + 1
        if k == n - 1:
            c1 = 1 << PRECISION
        return c0, c1 - c0

    def encode(self, stack: AnsStack, x_index: np.ndarray) -> tuple[float, float]:
        """Code one data point (its grid indices, shape (dim,)) onto ``stack``.

        Returns ``(bits_back, bits_pushed)``: what the pop removed and the
        pushes added, both measured on the stack.
        """
        before = stack.content_bits()
        z = np.array([stack.pop(c) for c in self.posterior_cdfs(x_index)])
        popped = before - stack.content_bits()
        x_mean = self.likelihood_mean(z)
        for j in range(self.dim):
            stack.push(*self._x_interval(x_mean[j], int(x_index[j])))
        for i in range(self.dim):
            c = self.prior_cdfs[i]
            stack.push(int(c[z[i]]), int(c[z[i] + 1] - c[z[i]]))
        return popped, stack.content_bits() - before + popped

    def decode(self, stack: AnsStack) -> np.ndarray:
        """Undo the last :meth:`encode`: return the data point's grid indices."""
        z = np.zeros(self.dim, dtype=np.int64)
        for i in reversed(range(self.dim)):
            z[i] = stack.pop(self.prior_cdfs[i])
        x_mean = self.likelihood_mean(z)
        x_index = np.zeros(self.dim, dtype=np.int64)
        edges = self.x_grid.edges()
        for j in reversed(range(self.dim)):
            x_index[j] = stack.pop(leaky_cdf(self.likelihood_cdf(x_mean[j], edges)))
        for i, c in reversed(list(enumerate(self.posterior_cdfs(x_index)))):
            stack.push(int(c[z[i]]), int(c[z[i] + 1] - c[z[i]]))
        return x_index

    # -- the box codec without bits back: round, then code y_hat and x --------

    def _rounded_cdfs(self) -> list[tuple[int, np.ndarray]]:
        """Per dimension ``(B, cdf)``: symbols ``-B..B`` of the discretized
        Gaussian prior on the lattice ``mean + Z`` (chapter 3)."""
        out = []
        for s in self.scale:
            b = math.ceil(10 * s) + 1
            edges = np.arange(-b, b + 2) - 0.5
            out.append((b, leaky_cdf(ndtr(edges / s))))
        return out

    @torch.no_grad()
    def encode_rounded(self, stack: AnsStack, x_index: np.ndarray) -> None:
        """Code one data point with ``y_hat = round(f(x) - mean) + mean``: push
        ``x`` under ``P(x | g(y_hat))``, then the symbols. Nothing is popped."""
        x = torch.from_numpy(self.x_grid.centre(x_index))[None]
        y = self.codec.quantizer.encoder(x)[0].numpy()
        tables = self._rounded_cdfs()
        sym = [int(np.clip(np.round(y[i] - self.mean[i]), -b, b))
               for i, (b, _) in enumerate(tables)]
        y_hat = torch.from_numpy(self.mean + np.array(sym, dtype=np.float64))
        x_mean = self.codec.quantizer.decoder(y_hat[None])[0].numpy()
        for j in range(self.dim):
            stack.push(*self._x_interval(x_mean[j], int(x_index[j])))
        for (b, c), k in zip(tables, sym, strict=True):
            stack.push(int(c[k + b]), int(c[k + b + 1] - c[k + b]))

    @torch.no_grad()
    def decode_rounded(self, stack: AnsStack) -> np.ndarray:
        """Undo the last :meth:`encode_rounded`."""
        tables = self._rounded_cdfs()
        sym = np.zeros(self.dim)
        for i in reversed(range(self.dim)):
            b, c = tables[i]
            sym[i] = stack.pop(c) - b
        y_hat = torch.from_numpy(self.mean + sym)
        x_mean = self.codec.quantizer.decoder(y_hat[None])[0].numpy()
        x_index = np.zeros(self.dim, dtype=np.int64)
        edges = self.x_grid.edges()
        for j in reversed(range(self.dim)):
            x_index[j] = stack.pop(leaky_cdf(self.likelihood_cdf(x_mean[j], edges)))
        return x_index

    def latent_grid_bias_bits(self) -> float:
        """``lmbda ||G||_F^2 dz^2 / 12``: the distortion the latent grid adds.

        The decoder sees a bin centre, off by about ``U(-dz/2, dz/2)`` from a
        continuous sample; through the linear decoder ``g(z) = G z + b`` that
        raises the expected distortion term by this much. One-sided, so it is
        added to the predicted rate rather than to its tolerance."""
        g_norm2 = self.codec.quantizer.decoder.weight.detach().pow(2).sum().item()
        return self.lmbda * g_norm2 * self.z_grids[0].step ** 2 / 12

    def lossless_offset_bits(self) -> float:
        """``(dim / 2) log2(pi / (lmbda ln 2)) - dim log2(x_step)``: the constant
        that turns the free energy ``R + lmbda D`` into the expected code length
        of ``x`` on the data grid (chapter 1's ``log Z_lambda`` and the bin width)."""
        return self.dim * (0.5 * math.log2(math.pi / (self.lmbda * math.log(2)))
                           - math.log2(self.x_grid.step))
