"""Piggyback filters (Zhai et al., ECCV 2020): most filters of a new task are learned
linear combinations of frozen bank filters, a few are new free filters.

For a layer with C filters and a bank of n filters (rows of shape c_in x k x k):
    weight = concat(free (u filters), coef.T @ bank (C - u filters))
Task 1 has only free filters. After a task, its free filters join the bank.
"""
from __future__ import annotations

import math
from typing import Any, Collection, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pbgan_core.bank import LayerBank
from pbgan_core.errors import PbganError
from pbgan_core.factorizer import FilterConvFactorizer, iter_convs, replace_modules
from pbgan_core.hookspecs import hookimpl
from pbgan_core.layers import FilterConv, filters_of
from pbgan_core.options import Option


# The bank path writes and reads the basis (n channels) and concatenates the output, forward and
# backward: memory-bound work that costs about this many multiply-adds per element moved (fitted to
# per-layer timings on CPU; see BENCHMARKS.md). Without it, high-resolution layers took the bank
# path for a small saving in multiply-adds and ran slower.
BANK_ELEMENT_COST = 40
# Default coefficient learning-rate multiplier (see PiggybackConv); measured best of 1, 10, 30,
# 100, 300 and 1000 (BENCHMARKS.md). Entries written before an option existed get the value it
# had then from the store (store.OPTIONS_ADDED); options missing in code get the defaults below.
COEF_SCALE = 100.0
# --allocation small-free: layers with at most this share of the largest layer's filter weights
# are fully free (see free_shares), and a later task stores this share of a standalone generator.
SMALL_LAYER_SHARE = 1 / 8
BUDGET = 0.3
# --bank-limit: a later task's layer combines at most this many times its filter count of bank
# filters; measured against the whole bank and a warm full copy over 100 tasks (BENCHMARKS.md)
BANK_LIMIT = 1.0
# --bank-segments: bank files a later task's rows come from. The first task's file holds a whole
# generator, a later task's about 0.25 of one, so 3 files (or, without the first task's, the 5-6
# needed for --bank-limit 1) make loading a task read at most about 1.4x what task 2's load reads.
BANK_SEGMENTS = 3


def free_count(filters: int, share: float) -> int:
    """Free filters of a later task's layer of `filters` filters at a free `share` (at least one if share > 0)."""
    return min(filters, math.ceil(share * filters))


class PiggybackConv(FilterConv):
    """Free filters plus piggyback filters `coef.T @ bank`, filter-major: (C, c_in, k, k)."""

    def __init__(self, base: nn.Module, bank: torch.Tensor | None, lam: float, initialize: bool = True,
                 coef_scale: float = 1.0, free_init: str = "copy", mix_free: bool = False,
                 rows: torch.Tensor | None = None, unit_rows: bool = False):
        super().__init__(base)
        filters = filters_of(base)
        # The parameter holds coefficients / coef_scale: Adam moves every parameter by about its
        # learning rate, so a larger scale makes coefficients (values near 1) adapt as fast, relative
        # to their size, as free filter weights (values near 0.02) do.
        self.coef_scale = coef_scale
        self.out_filters = filters.shape[0]
        self.free_count = self.out_filters if bank is None else free_count(self.out_filters, lam)
        free = filters[: self.free_count].clone()
        if bank is not None and initialize and free_init == "fresh":
            # New directions instead of copies of filters the bank already holds: at unit size beside
            # unit-size bank filters (the first task's trained filters are about that size), else at
            # the size of the latest task's filters, which drifts upward from task to task.
            scale = free[0].numel() ** -0.5 if unit_rows else filters.std()
            free = torch.randn_like(free) * scale
        self.free = nn.Parameter(free)
        piggy = self.out_filters - self.free_count
        # mix_free: the piggyback filters combine this task's free filters too, not only the bank's,
        # so they can move in the new directions the free filters learn (the bank's span is narrow).
        self.mix_free = bool(mix_free) and piggy > 0 and bank is not None
        if piggy and bank is not None:
            if tuple(bank.shape[1:]) != tuple(filters.shape[1:]):
                raise PbganError(f"bank filters of shape {tuple(bank.shape[1:])} do not fit a layer with filters "
                                 f"{tuple(filters.shape[1:])}: the generator differs from the one this bank was built for")
            # rows: the bank filters this task combines (--bank-limit), stored with the task; the
            # whole bank when None. Only those rows are ever read from the bank.
            self._whole_bank = LayerBank.of(bank)
            self.unit_rows = bool(unit_rows)
            if rows is not None:
                self.register_buffer("rows", rows.to(torch.long))
                self.register_load_state_dict_post_hook(lambda module, keys: module._select_rows())
            else:
                self.rows = None
            if rows is not None and not initialize:  # the stored rows arrive with load_state_dict
                chosen = torch.empty(len(rows), *filters.shape[1:], dtype=filters.dtype, device=filters.device)
            else:
                chosen = self._chosen()
            self.register_buffer("bank", chosen, persistent=False)
            basis = self.bank.shape[0] + (self.free_count if self.mix_free else 0)
            coef = torch.zeros(basis, piggy, dtype=filters.dtype, device=filters.device)
            if initialize:
                coef[: self.bank.shape[0]] = self._fit_coefficients(self.bank, filters[self.free_count:]) / coef_scale
            self.coef = nn.Parameter(coef)
        else:
            self.bank = None
            self.coef = None
            self.rows = None

    def _chosen(self) -> torch.Tensor:
        whole = self._whole_bank
        chosen = whole.all() if self.rows is None else whole.rows(self.rows)
        if not self.unit_rows:
            return chosen
        # A filter followed by normalization works at any size, and its size drifts in training; the
        # next task's free filters start at the size of this one's, so without this sizes would
        # compound from task to task (by about 1.6x a task at 32 px, until float32 overflows).
        norms = chosen.flatten(1).norm(dim=1).clamp_min(torch.finfo(chosen.dtype).tiny)
        return chosen / norms.view(-1, *([1] * (chosen.dim() - 1)))

    def _select_rows(self) -> None:
        """After loading a stored task: take the bank rows its file names."""
        if self.rows.is_meta or self._whole_bank.is_meta:
            return
        if len(self.rows) and (int(self.rows.min()) < 0 or int(self.rows.max()) >= len(self._whole_bank)):
            raise PbganError(f"a stored task names bank filters the bank does not hold (rows up to "
                             f"{int(self.rows.max())}, bank {len(self._whole_bank)}): the file is damaged")
        self.bank = self._chosen().to(self.bank.device)

    @staticmethod
    def _fit_coefficients(bank: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Least squares: the piggyback filters start as close as the bank allows to `target`.

        With the default warm start, `target` holds the first task's filters, which the
        bank contains exactly, so the new task starts from a working generator instead of
        noise; with a cold start it is the fresh initialization projected onto the bank.
        """
        b = bank.flatten(1).T.double()  # (c_in*k*k, n)
        # gelsd (SVD): gelsy is several times faster but its result changed between two identical runs
        return torch.linalg.lstsq(b, target.flatten(1).T.double(), driver="gelsd").solution.to(bank.dtype)

    def coefficients(self) -> torch.Tensor:
        return self.coef * self.coef_scale if self.coef_scale != 1.0 else self.coef

    def filters(self) -> torch.Tensor:
        if self.coef is None:
            return self.free
        basis = torch.cat([self.bank, self.free]) if self.mix_free else self.bank
        piggy = (self.coefficients().T @ basis.flatten(1)).view(-1, *self.bank.shape[1:])
        return torch.cat([self.free, piggy])

    def _bank_path_is_cheaper(self, x: torch.Tensor) -> bool:
        """Compare the costs of the two exact ways to compute the piggyback filters.

        dense: build coef.T @ bank every step (and its gradient), then one conv;
        bank:  convolve with the frozen bank (no weight gradient), then mix channels 1x1.
        Costs are multiply-adds, plus the bank path's memory traffic (BANK_ELEMENT_COST).
        """
        n, piggy = self.coef.shape
        fan_in = self.bank[0].numel()
        spatial_in = x.shape[0] * x.shape[-2] * x.shape[-1]
        stride = self.stride[0] * self.stride[1]
        if self.transposed:
            per_filter = spatial_in * fan_in
            spatial_out = spatial_in * stride
        else:
            spatial_out = spatial_in // stride
            per_filter = spatial_out * fan_in
        grad = torch.is_grad_enabled() and self.coef.requires_grad
        conv_passes = 3 if grad else 1  # forward, input grad, weight grad
        dense = (2 if grad else 1) * n * piggy * fan_in + conv_passes * per_filter * self.out_filters
        bank = ((2 if grad else 1) * per_filter * n + conv_passes * per_filter * self.free_count
                + conv_passes * spatial_out * n * piggy)
        traffic = spatial_out * (n + 2 * self.out_filters) * (2 if grad else 1)
        return bank + BANK_ELEMENT_COST * traffic < dense

    def _bank_weight(self) -> torch.Tensor:
        """The bank as the bank path convolves with it. A transposed conv takes its filters
        in-channel-major, so its frozen bank is laid out that way once, not copied every step."""
        if not self.transposed:
            return self.bank
        cached = getattr(self, "_bank_in_major", None)
        if cached is None or cached[0] is not self.bank:
            cached = (self.bank, self.bank.transpose(0, 1).contiguous().transpose(0, 1))
            self._bank_in_major = cached
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coef is None or not self._bank_path_is_cheaper(x):
            return self.conv(x, self.filters(), self.bias)
        bias = (None, None) if self.bias is None else (self.bias[: self.free_count], self.bias[self.free_count:])
        free = self.conv(x, self.free, None if self.mix_free else bias[0])
        basis = self.conv(x, self._bank_weight())
        if self.mix_free:  # the basis holds the free filters' responses before their bias
            basis = torch.cat([basis, free], dim=1)
            if bias[0] is not None:
                free = free + bias[0].view(1, -1, 1, 1)
        piggy = F.conv2d(basis, self.coefficients().T[:, :, None, None], bias[1])
        return torch.cat([free, piggy], dim=1)

    def extra_repr(self) -> str:
        n = 0 if self.coef is None else self.bank.shape[0]
        return f"filters={self.out_filters}, free={self.free_count}, bank={n}, mix_free={self.mix_free}"


def bank_limit(filters: int, limit: float) -> int | None:
    """Most bank filters a layer of `filters` filters combines at --bank-limit `limit` (None: all)."""
    return math.ceil(limit * filters) if limit > 0 else None


def candidate_weights(bank: LayerBank, previous: Mapping[str, torch.Tensor] | None,
                      previous_scale: float, previous_unit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank rows the latest task's filters are made of, and how much of them each carries.

    The latest task's filters are what a warm-started task starts from. They are combinations of
    the rows that task combined and of its own free filters, which are the bank's last rows now;
    a row's weight is its coefficient row norm times its filter norm (1 for a bank filter where the
    latest task combined them at unit size, `previous_unit`). Without the latest task's
    coefficients (it was the first task, or another factorizer's) there are none."""
    n = len(bank)
    if previous is None or previous.get("coef") is None:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    free = previous["free"].shape[0]
    coef = previous["coef"].detach().double() * previous_scale
    before = previous["rows"] if previous.get("rows") is not None else torch.arange(n - free)
    mixed = coef.shape[0] == len(before) + free
    candidates = torch.cat([before.to(torch.long), torch.arange(n - free, n)])
    weight = torch.zeros(len(candidates), dtype=torch.float64)
    weight[: len(before)] = coef[: len(before)].norm(dim=1)
    # a free filter is itself one of the latest task's filters, and may also be mixed
    weight[len(before):] = (1 + (coef[len(before):].norm(dim=1) ** 2 if mixed else 0)) ** 0.5
    norms = bank.rows(candidates).flatten(1).double().norm(dim=1)
    if previous_unit:
        norms[: len(before)] = 1.0
    return candidates, weight * norms


def choose_rows(bank: torch.Tensor | LayerBank, limit: int, candidates: torch.Tensor, weight: torch.Tensor,
                parts: Collection[int] | None = None) -> torch.Tensor:
    """The `limit` bank rows a later task combines (ascending): the `candidates` carrying most of the
    latest task's filters (`candidate_weights`), so the cost of choosing, like the task itself, does
    not grow with the bank. Only rows of the bank `parts` (segments) given are taken while they hold
    enough; rows still missing are the newest others."""
    bank = LayerBank.of(bank)
    if parts is not None:
        inside = torch.isin(bank.part_of(candidates), torch.tensor(sorted(parts), dtype=torch.long))
        candidates, weight = candidates[inside], weight[inside]
    chosen = candidates[torch.argsort(weight, descending=True, stable=True)[:limit]]
    if len(chosen) < limit:  # fewer candidates (a smaller limit before): the newest others, in `parts` first
        taken = set(chosen.tolist())
        pools = [bank.part_rows(p) for p in sorted(parts or (), reverse=True)] + [torch.arange(len(bank))]
        extra = []
        for i in (i for rows in pools for i in reversed(rows.tolist())):
            if len(taken) >= limit:
                break
            if i not in taken:
                taken.add(i)
                extra.append(i)
        chosen = torch.cat([chosen, torch.tensor(extra, dtype=torch.long)])
    return chosen.sort().values


def choose_segments(banks: Mapping[str, LayerBank], counts: Mapping[str, int],
                    weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], most: int) -> list[int] | None:
    """The bank segments a later task takes its rows from, the same for all its layers, so that
    loading it reads at most `most` bank files (more only where those hold fewer rows than a layer
    combines). Segments are ranked by the share of the latest task's filters they carry (`weights`:
    layer -> `candidate_weights`), summed over the layers; the newest first among equals. None: no
    bound (`most` 0, or layers with unequal segment lists)."""
    parts = {bank.parts for bank in banks.values()}
    if not most or len(parts) != 1:
        return None
    total = parts.pop()
    score = torch.zeros(total, dtype=torch.float64)
    for path, bank in banks.items():
        candidates, weight = weights[path]
        if weight.sum() > 0:
            score.index_add_(0, bank.part_of(candidates), weight / weight.sum())
    kept: list[int] = []
    held = dict.fromkeys(banks, 0)  # rows the kept segments hold, per layer
    for p in sorted(range(total), key=lambda p: (-float(score[p]), -p)):
        if len(kept) >= most and all(held[path] >= counts[path] for path in banks):
            break
        kept.append(p)
        for path, bank in banks.items():
            held[path] += len(bank.part_rows(p))
    return sorted(kept)


class PiggybackConv2d(PiggybackConv):
    """Wraps an nn.Conv2d."""


class PiggybackConvTranspose2d(PiggybackConv):
    """Wraps an nn.ConvTranspose2d (its filters live on dim 1 of the weight)."""


WRAPPERS = {nn.Conv2d: PiggybackConv2d, nn.ConvTranspose2d: PiggybackConvTranspose2d}


class PiggybackFactorizer(FilterConvFactorizer):
    name = "piggyback"
    bank_layer = PiggybackConv
    description = "Piggyback GAN: bank-filter combinations plus a few free filters per layer (zero forgetting)"
    options = (
        Option("lambda", 0.25, "with --allocation uniform: share of each layer's filters that are new free "
               "filters in later tasks", above=0, max=1),
        Option("free-last", True, "later tasks learn the generator's output layer as all free filters instead "
               "of bank combinations (it has only 3 filters, so this costs little; --no-free-last: the paper's setting)"),
        Option("coef-scale", COEF_SCALE, "the piggyback coefficients are learned divided by this and multiplied back in "
               "the forward pass, so Adam moves them this many times faster than the filters (1: the paper's setting)",
               above=0),
        Option("mix-free", True, "piggyback filters also combine the task's own free filters, not only the "
               "bank's (adds free x piggyback coefficients per layer)"),
        Option("allocation", "small-free", "where free filters go: small-free (small layers fully free, the others "
               "one common share that fills --budget) or uniform (the --lambda share in every layer, as in the paper)",
               choices=("small-free", "uniform")),
        Option("budget", BUDGET, "with --allocation small-free: the parameters each later task stores (free "
               "filters, coefficients, biases), as a share of one standalone generator (0: what --lambda in every layer "
               "would store)", min=0, max=1),
        Option("bank-limit", BANK_LIMIT, "most bank filters a later task's layer combines, as a multiple of the "
               "layer's filter count (chosen from those the latest task used and its free filters, and stored with "
               "the task), so a task costs the same at task 100 as at task 2; 0: the whole bank, whose size grows "
               "with every task (the paper's setting)", min=0),
        Option("bank-segments", BANK_SEGMENTS, "with --bank-limit: a later task takes its bank filters from at "
               "most this many tasks' bank files (those carrying most of the latest task's filters; more only where "
               "they hold too few), so loading it reads about as much at task 100 as at task 2; 0: no bound",
               min=0),
        Option("unit-rows", True, "piggyback filters combine the bank filters scaled to unit size, and fresh free "
               "filters start at unit size, so filter sizes, which drift freely in layers followed by normalization, "
               "never compound from task to task (--no-unit-rows: the bank as stored and free filters at the latest "
               "task's size)"),
        Option("free-init", "fresh", "how a later task's free filters start: fresh (random, at the layer's filter "
               "scale) or copy (the latest task's first filters, which the bank already holds)",
               choices=("fresh", "copy")),
    )

    # a later task's bank rows depend on the latest task's coefficients (--bank-limit)
    uses_previous_task = True
    # wrap takes each layer's bank as a LayerBank: a task that combines some rows reads only those
    reads_bank_rows = True

    def wrap(self, generator: nn.Module, bank: dict[str, torch.Tensor], opts: Mapping[str, Any],
             initialize: bool = True, previous: Mapping[str, Any] | None = None) -> nn.Module:
        """`previous`: the latest task's wrapped state dict ("state") and options ("options"), from
        which a later task under --bank-limit chooses the bank rows it combines."""
        opts = {**{o.key: o.default for o in self.options}, **opts}
        lam = float(opts["lambda"])
        if not 0.0 < lam <= 1.0:
            raise PbganError(f"--lambda must be in (0, 1], got {lam}")
        convs = [path for path, _ in iter_convs(generator)]
        last = convs[-1] if convs else None
        free_last = bool(opts["free_last"])
        coef_scale = float(opts["coef_scale"])
        if coef_scale <= 0:
            raise PbganError(f"--coef-scale must be positive, got {coef_scale}")
        if bank and set(bank) != set(convs):
            raise PbganError("the generator's convolutions do not match the bank's layers: later tasks must "
                             "use the same generator (architecture, --netG, --ngf, --norm) as the first task")

        mix_free = bool(opts["mix_free"])
        limit = float(opts.get("bank_limit", 0.0))
        if limit < 0:
            raise PbganError(f"--bank-limit must be 0 (the whole bank) or positive, got {limit}")
        limits = {path: bank_limit(filters_of(conv).shape[0], limit) for path, conv in iter_convs(generator)}
        # the bank rows each layer combines: all, or at most its limit
        counts = {path: min(len(filters), limits[path] or len(filters)) for path, filters in bank.items()}
        shares = {path: lam for path in convs}
        if bank and opts["allocation"] != "uniform":
            shares = budget_shares(generator, counts, lam, float(opts["budget"]), mix_free,
                                   {last} if free_last else set())
        state = (previous or {}).get("state") or {}
        previous_scale = float((previous or {}).get("options", {}).get("coef_scale", 1.0))
        previous_unit = bool((previous or {}).get("options", {}).get("unit_rows", False))
        # layers without bank filters (all free), and those combining some of their bank's rows
        all_free = {path for path in convs if (path == last and free_last) or shares[path] >= 1.0}
        bounded = {path: LayerBank.of(bank[path]) for path in convs
                   if path in bank and path not in all_free and counts[path] < len(bank[path])}
        if initialize:  # weigh each bounded layer's candidate rows once, for its segments and its rows
            weights = {}
            for path, layer_bank in bounded.items():
                mine = {k[len(path) + 1:]: v for k, v in state.items() if k.startswith(f"{path}.")}
                weights[path] = candidate_weights(layer_bank, mine or None, previous_scale, previous_unit)
            parts = choose_segments(bounded, counts, weights, int(opts["bank_segments"]))

        def make(path: str, conv: nn.Module) -> nn.Module:
            layer_bank = None if path in all_free else bank.get(path)
            rows = None
            if path in bounded:
                rows = (choose_rows(bounded[path], counts[path], *weights[path], parts) if initialize
                        else torch.zeros(counts[path], dtype=torch.long))  # the stored rows replace these
            return WRAPPERS[type(conv)](conv, layer_bank, shares[path] if layer_bank is not None else 1.0, initialize,
                                        coef_scale, str(opts["free_init"]),
                                        mix_free, rows, bool(opts["unit_rows"]))

        replace_modules(generator, lambda p, m: type(m) in WRAPPERS, make)
        return generator


def budget_shares(generator: nn.Module, bank: Mapping[str, int], lam: float, budget: float,
                  mix_free: bool, free: Collection[str] = ()) -> dict[str, float]:
    """--allocation small-free: each layer's share of free filters. The task stores `budget` of the
    standalone generator's parameters (its biases and normalization layers included), or, with
    budget 0, as many filter weights as `lam` in every layer would. Layers in `free` are fully free.
    `bank`: layer -> the number of bank filters it combines."""
    sizes = {path: (*filters_of(conv).flatten(1).shape, bank[path]) for path, conv in iter_convs(generator)}
    if not budget:
        return free_shares(sizes, sum(layer_cost(size, lam, mix_free) for size in sizes.values()), mix_free, free)
    if not 0.0 < budget <= 1.0:
        raise PbganError(f"--budget must be in (0, 1], got {budget}")
    total = sum(p.numel() for p in generator.parameters())
    others = total - sum(c * d for c, d, _ in sizes.values())  # biases, normalization: stored whole
    shares = free_shares(sizes, budget * total - others, mix_free, free)
    least = others + sum(layer_cost(size, shares[path], mix_free) for path, size in sizes.items())
    if least > budget * total:
        raise PbganError(f"--budget {budget} is below what this generator's task needs at least "
                         f"({least / total:.3f} of a standalone generator, with one free filter in each large "
                         f"layer); raise --budget or use --allocation uniform")
    return shares


def layer_cost(size: tuple[int, int, int], share: float, mix_free: bool = False) -> int:
    """Stored filter weights of a layer (C filters of D weights, n bank filters) at a free share."""
    c, d, n = size
    u = free_count(c, share)
    return u * d + (n + (u if mix_free else 0)) * (c - u)


def free_shares(sizes: Mapping[str, tuple[int, int, int]], budget: float, mix_free: bool = False,
                free: Collection[str] = ()) -> dict[str, float]:
    """Per layer, the share of its filters that are free, storing at most `budget` filter weights in
    all. `sizes`: layer -> (filters C, weights per filter D, bank filters n).

    After a short unconstrained warm-up on a new task, most of every layer's filter change lies
    outside the bank's span, and the small outer layers (first, last, near the image) change the
    most while costing the least: they are made fully free (as is any layer whose bank has at least as
    many filters as a filter has weights), and the large inner layers share
    what is left of the budget with one common, smaller share (at least one free filter each).
    """
    largest = max(c * d for c, d, _ in sizes.values())
    # also free: layers whose bank has as many filters as a filter has weights (coefficients would cost more)
    small = {path for path, (c, d, n) in sizes.items() if c * d <= largest * SMALL_LAYER_SHARE or n >= d or path in free}
    rest = [path for path in sizes if path not in small]
    left = budget - sum(c * d for path, (c, d, _) in sizes.items() if path in small)
    lo, hi = 1e-9, 1.0  # the largest common share of the other layers that fits
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(layer_cost(sizes[path], mid, mix_free) for path in rest) <= left else (lo, mid)
    return {path: 1.0 if path in small else lo for path in sizes}


@hookimpl
def register_factorizers(register):
    register(PiggybackFactorizer())
