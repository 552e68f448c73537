"""The released ADPretrain code's downstream detector maths, as pure torch functions.

"As the release" means equal to the outputs of the authors' released code (commit 8d1a32c of
the public ADPretrain code; golden fixtures in ``tests/fixtures/release_parity``). The
package's own detectors (``adpretrain_hf.detectors``) differ from it on purpose in several
places; this module is the one home of the release's rules, so a ``variant="release"``
detector and the ``release`` evaluation protocol compute exactly what the paper's tables
were computed with:

- PatchCore (:func:`release_patchcore_embed`, :func:`release_coreset_indices`,
  :func:`release_nn_squared_distances`, :func:`release_patchcore_maps`): the last three
  levels, a zero-padded 3x3 neighbourhood per position, every level's flattened
  neighbourhood pooled to 1024 numbers, the concatenation pooled to 1024 again; an
  approximate greedy coreset; SQUARED L2 to the nearest bank row; image score = plain max of
  the patch grid (no Eq. 7); maps upsampled with ``align_corners=False``.
- PaDiM (:func:`release_padim_fit`, :func:`release_padim_distances`,
  :func:`release_level_mean_map`): per level and position a Gaussian (unbiased covariance
  + 0.01 I, explicit inverse), sqrt of the Mahalanobis form, grids upsampled with
  ``align_corners=True`` and averaged. The release then min-max normalises with ONE min and
  max over the whole test set: a protocol step, :func:`global_min_max_normalise`, kept out
  of the detector maths on purpose (it makes a test image's score depend on the others).
- FeatureNorm (:func:`release_featurenorm_token_scores`, :func:`release_level_mean_map`):
  token score ``sqrt(||e|| + 1) - 1`` per level, ``align_corners=True``, level mean,
  Gaussian sigma 4, image score = max of the smoothed map.

Every map is smoothed by ``anomaly_map_adpretrain.gaussian_blur2d`` (scipy's
``gaussian_filter(sigma=4, mode="reflect", truncate=4.0)``), run in float64 like scipy.
Part of the remote-code bundle: imports only torch (and the package's anomaly-map module).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .anomaly_map_adpretrain import GAUSSIAN_SIGMA, gaussian_blur2d

RELEASE_PATCHCORE_DIM = 1024  # pretrain and target embedding dimension of the release PatchCore
RELEASE_PATCHCORE_LEVELS = 3  # the release uses features[-3:]
RELEASE_PATCHSIZE = 3  # zero-padded 3x3 neighbourhood, stride 1
RELEASE_CORESET_PERCENTAGE = 0.1  # get_patchcore always keeps 10% of the bank
RELEASE_CORESET_PROJECTION_DIM = 128  # random linear projection used only to choose coreset rows
RELEASE_CORESET_STARTING_POINTS = 10  # random rows seeding the average-distance initialisation
RELEASE_PADIM_COV_EPS = 0.01  # added to every covariance's diagonal
PATCHCORE_ALIGN_CORNERS = False  # release PatchCore upsampling (RescaleSegmentor)
LEVEL_MEAN_ALIGN_CORNERS = True  # release PaDiM and FeatureNorm upsampling
NN_BLOCK_ROWS = 4096  # query rows per exact-distance block


# -- shared ------------------------------------------------------------------------------------
def smooth_maps(maps: torch.Tensor, sigma: float = GAUSSIAN_SIGMA) -> torch.Tensor:
    """``[N, H, W]`` -> Gaussian-smoothed ``[N, H, W]`` (float32), computed in float64 as scipy does."""
    return gaussian_blur2d(maps.double(), sigma).float()


def _check_grids(grids: Sequence[torch.Tensor], what: str) -> None:
    if len(grids) == 0:
        raise ValueError(f"{what}: no level given, pass one [B, h, w] grid per level")
    for index, grid in enumerate(grids):
        if grid.dim() != 3:
            raise ValueError(f"{what}: level {index} has shape {tuple(grid.shape)}, pass [B, h, w] grids")


def release_level_mean_map(
    grids: Sequence[torch.Tensor], size: tuple[int, int], align_corners: bool = LEVEL_MEAN_ALIGN_CORNERS
) -> torch.Tensor:
    """Release PaDiM / FeatureNorm: per-level ``[B, h_l, w_l]`` grids -> ``[B, H, W]`` (before smoothing).

    Each grid is bilinearly resized to ``size`` (``align_corners=True`` in the release) and the
    levels are averaged with equal weight.
    """
    _check_grids(grids, "release_level_mean_map")
    up = [
        F.interpolate(g.float().unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=align_corners).squeeze(1)
        for g in grids
    ]
    return torch.stack(up, dim=0).mean(dim=0)


def global_min_max_normalise(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The release PaDiM's protocol step: ``(maps - min) / (max - min)`` with ONE min and max over
    every map of the test set ``[N, H, W]``; returns ``(normalised [N, H, W], image scores [N])``
    (image score = max of its normalised map).

    Not part of the detector: it makes a test image's score depend on which other images are
    evaluated with it (the largest value of the set becomes exactly 1). AUROC and PRO are
    unchanged by it (a positive affine map); only thresholds read off the values change.
    """
    if maps.dim() != 3 or maps.shape[0] == 0:
        raise ValueError(f"global_min_max_normalise expects the test set's maps [N, H, W], got {tuple(maps.shape)}")
    low, high = maps.min(), maps.max()
    if not bool(high > low):
        raise ValueError("global_min_max_normalise: every map value is equal, the min-max range is empty")
    normalised = (maps - low) / (high - low)
    return normalised, normalised.flatten(1).amax(dim=1)


# -- PatchCore --------------------------------------------------------------------------------
def _neighbourhoods(fmap: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, h0, w0, C * 9]``: each position's zero-padded 3x3 neighbourhood,
    flattened in (channel, row, col) order; the 9 neighbourhood planes are bilinearly resized
    (``align_corners=False``) to the first used level's grid ``(h0, w0)`` when it differs."""
    b, c, h, w = fmap.shape
    k = RELEASE_PATCHSIZE
    patches = F.unfold(fmap.float(), kernel_size=k, padding=k // 2, stride=1)  # [B, C*9, h*w]
    if (h, w) != tuple(grid):
        planes = patches.reshape(b * c * k * k, 1, h, w)
        planes = F.interpolate(planes, size=tuple(grid), mode="bilinear", align_corners=False)
        patches = planes.reshape(b, c * k * k, grid[0] * grid[1])
    return patches.transpose(1, 2).reshape(b, grid[0], grid[1], c * k * k)


def release_patchcore_embed(
    maps: Sequence[torch.Tensor], dim: int = RELEASE_PATCHCORE_DIM, num_levels: int = RELEASE_PATCHCORE_LEVELS
) -> torch.Tensor:
    """Release PatchCore patch features: levels ``[B, C_l, h_l, w_l]`` -> ``[B, h, w, dim]``.

    Only the last ``num_levels`` levels are used; ``(h, w)`` is the first used level's grid.
    Per level the flattened neighbourhood (``C_l * 9`` numbers) is adaptive-average-pooled to
    ``dim`` (for ``C_l = 1024`` a 3x3 mean per channel; for small ``C_l`` it stretches), the
    per-level vectors are concatenated level by level and adaptive-average-pooled to ``dim``
    again -- so every level weighs the same whatever its width (the package's default weighs
    layers by channel count and does not widen).
    """
    if len(maps) < num_levels:
        raise ValueError(f"release PatchCore uses the last {num_levels} levels but got {len(maps)}: pass more levels")
    used = list(maps)[-num_levels:]
    for index, fmap in enumerate(used):
        if fmap.dim() != 4:
            raise ValueError(f"release PatchCore: level {index} has shape {tuple(fmap.shape)}, pass [B, C, h, w] maps")
    grid = tuple(used[0].shape[-2:])
    pooled = []
    for fmap in used:
        hood = _neighbourhoods(fmap, grid)  # [B, h, w, C*9]
        flat = hood.reshape(-1, 1, hood.shape[-1])
        pooled.append(F.adaptive_avg_pool1d(flat, dim).squeeze(1))  # [B*h*w, dim]
    joined = torch.cat(pooled, dim=1).unsqueeze(1)  # [B*h*w, 1, levels*dim], level-major
    out = F.adaptive_avg_pool1d(joined, dim).squeeze(1)
    return out.reshape(used[0].shape[0], grid[0], grid[1], dim)


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor, aa: Optional[torch.Tensor] = None,
                        minus_two_a: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Euclidean distances ``[n, m]`` by the expansion ``|a|^2 + |b|^2 - 2ab`` clamped at 0 (the
    release coreset's formula; its float32 rounding decides ties, so it is kept). For many calls
    with the same ``a``, pass ``aa = |a|^2`` (``[n, 1]``) and ``minus_two_a = -2.0 * a`` once:
    the values are the ones computed here (scaling by -2 is exact), without rewriting ``[n, d]``
    per call, which was most of a greedy pick's memory traffic."""
    aa = (a * a).sum(dim=1, keepdim=True) if aa is None else aa
    minus_two_a = -2.0 * a if minus_two_a is None else minus_two_a
    bb = (b * b).sum(dim=1).unsqueeze(0)
    return (minus_two_a @ b.T + aa + bb).clamp(min=0).sqrt()


def release_greedy_coreset(reduced: torch.Tensor, start_points: torch.Tensor, count: int) -> torch.Tensor:
    """Approximate greedy k-center selection on already projected features.

    Args:
        reduced: ``[M, d]`` bank rows after the random projection (only used for selection).
        start_points: ``[S]`` random starting rows.
        count: rows to select.
    Returns:
        ``[count]`` selected rows, in selection order: each row's distance to the chosen set
        starts as its mean distance to the starting rows; then ``count`` times the row with the
        largest distance (the first on ties) is chosen and distances become the minimum with
        the distance to it.
    """
    if reduced.dim() != 2 or start_points.dim() != 1 or start_points.numel() == 0:
        raise ValueError("release_greedy_coreset expects reduced [M, d] and start_points [S] with S >= 1")
    if not 1 <= count <= reduced.shape[0]:
        raise ValueError(f"release_greedy_coreset: count={count} must be in [1, {reduced.shape[0]}]")
    reduced = reduced.float().contiguous()
    squared_norms = (reduced * reduced).sum(dim=1, keepdim=True)  # [M, 1], the same value every call computes
    minus_two = -2.0 * reduced  # [M, d], likewise
    nearest = _pairwise_distances(reduced, reduced[start_points.long()], squared_norms, minus_two).mean(dim=1)  # [M]
    chosen = torch.empty(count, dtype=torch.long)
    for step in range(count):
        pick = int(torch.argmax(nearest))
        chosen[step] = pick
        nearest = torch.minimum(nearest, _pairwise_distances(reduced, reduced[pick : pick + 1], squared_norms, minus_two).squeeze(1))
    return chosen


def release_coreset_indices(
    bank: torch.Tensor,
    percentage: float = RELEASE_CORESET_PERCENTAGE,
    projection_dim: int = RELEASE_CORESET_PROJECTION_DIM,
    num_starting_points: int = RELEASE_CORESET_STARTING_POINTS,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The release's coreset of ``bank [M, D]``: ``[int(M * percentage)]`` selected rows.

    A random linear map ``D -> projection_dim`` (uniform in +-1/sqrt(D), ``nn.Linear``'s default
    init; skipped when ``D == projection_dim``), ``num_starting_points`` distinct random rows,
    then :func:`release_greedy_coreset`. The release draws from numpy's and torch's global
    RNGs; here ``generator`` seeds both draws, so the rows equal the release's only given its
    projection and starts (tested that way).
    """
    if not 0 < percentage <= 1:
        raise ValueError(f"coreset percentage={percentage} must be in (0, 1]")
    rows, width = bank.shape
    if percentage == 1:
        return torch.arange(rows)
    count = int(rows * percentage)
    if count < 1:
        raise ValueError(f"a {percentage:.0%} coreset of {rows} rows is empty: pass more training images")
    reduced = bank.float()
    if width != projection_dim:
        bound = 1.0 / width**0.5
        weight = (torch.rand(projection_dim, width, generator=generator) * 2 - 1) * bound
        reduced = reduced @ weight.to(reduced.device).T
    starts = torch.randperm(rows, generator=generator)[: min(num_starting_points, rows)]
    return release_greedy_coreset(reduced, starts.to(reduced.device), count)


NN_CANDIDATES = 8  # most float32-screened rows per query re-scored in float64 (more: the whole bank)


def _float32_expansion_error(dim: int) -> float:
    """A bound ``e`` with ``|float32(|q|^2 + |b|^2 - 2 q.b) - exact| <= e (|q|^2 + |b|^2)`` whatever the
    summation order: each length-``dim`` dot product errs by at most ``gamma_dim |q||b|`` (Higham's
    bound, ``gamma_n = n u / (1 - n u)``), the norms likewise, plus a few roundings for the sums."""
    unit = torch.finfo(torch.float32).eps / 2
    gamma = dim * unit / (1 - dim * unit)
    return 2 * gamma + 8 * unit


@torch.no_grad()
def release_nn_squared_distances(queries: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 1-NN SQUARED L2 distance of ``queries [N, D]`` to ``bank [M, D]`` -> ``(dist [N], index [N])``.

    Exact means the float64 minimum (the release's faiss ``IndexFlatL2`` expands in float32 and
    differs by <= 3e-6 relative; its nearest rows are the exact ones). It runs at the float32 GEMM
    rate: a float32 matrix-product pass screens the bank; the rows whose screened distance lies
    within twice the float32 rounding bound (:func:`_float32_expansion_error`) of the query's
    smallest are the only ones that can be nearest, and are re-scored in float64 (differences, not
    the cancelling expansion): usually one row, up to ``NN_CANDIDATES``; a query with more such rows
    is searched over the whole bank in float64. Ties go to the lowest row, as ``argmin`` over the
    whole bank. Returned as float32.
    """
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1] or bank.shape[0] == 0:
        raise ValueError(f"release_nn_squared_distances: queries [N, D] and bank [M>=1, D], got "
                         f"{tuple(queries.shape)} and {tuple(bank.shape)}")
    bank32, bank64 = bank.float(), bank.double()
    bank_sq = (bank32 * bank32).sum(dim=1)  # [M]
    error = _float32_expansion_error(bank.shape[1])
    k = min(NN_CANDIDATES, bank.shape[0])
    dists, indices = [], []
    for start in range(0, queries.shape[0], NN_BLOCK_ROWS):
        block = queries[start : start + NN_BLOCK_ROWS]
        block64 = block.double()
        q32 = block.float()
        q_sq = (q32 * q32).sum(dim=1, keepdim=True)  # [n, 1]
        screened = torch.addmm(bank_sq.unsqueeze(0), q32, bank32.T, alpha=-2.0).add_(q_sq)  # [n, M] float32
        smallest, index = screened.min(dim=1)
        bound = (2 * error * (q_sq.squeeze(1).double() + bank_sq.max().double()) + smallest.double()).float()
        contenders = (screened <= bound.nextafter(torch.tensor(float("inf"))).unsqueeze(1)).sum(dim=1)  # [n] rows that may be nearest
        value = (block64 - bank64[index]).square().sum(dim=1)  # one contender: it is the nearest
        few = ((contenders > 1) & (contenders <= k)).nonzero().squeeze(1)
        if few.numel():  # re-score the k screened-nearest rows, in row order so the first minimum is the lowest row
            candidates = screened[few].topk(k, dim=1, largest=False).indices.sort(dim=1).values  # [f, k]
            exact = (block64[few].unsqueeze(1) - bank64[candidates]).square().sum(dim=2)
            value[few], position = exact.min(dim=1)
            index[few] = candidates.gather(1, position.unsqueeze(1)).squeeze(1)
        many = (contenders > k).nonzero().squeeze(1)
        if many.numel():  # the whole bank, exactly, for the queries the screen could not narrow down
            value[many], index[many] = torch.cdist(block64[many], bank64, compute_mode="donot_use_mm_for_euclid_dist").square().min(dim=1)
        dists.append(value)
        indices.append(index)
    return torch.cat(dists).float(), torch.cat(indices)


def release_patchcore_maps(patch_grid: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch scores ``[B, h, w]`` -> ``(upsampled [B, H, W], smoothed [B, H, W])``: bilinear with
    ``align_corners=False``, then Gaussian sigma 4. (The image score is ``patch_grid``'s max.)"""
    _check_grids([patch_grid], "release_patchcore_maps")
    up = F.interpolate(patch_grid.float().unsqueeze(1), size=tuple(size), mode="bilinear",
                       align_corners=PATCHCORE_ALIGN_CORNERS).squeeze(1)
    return up, smooth_maps(up)


def release_patchcore_image_scores(patch_grid: torch.Tensor) -> torch.Tensor:
    """Release PatchCore image score ``[B]``: the plain max of the patch grid ``[B, h, w]`` (no Eq. 7)."""
    return patch_grid.flatten(1).amax(dim=1)


# -- PaDiM ------------------------------------------------------------------------------------
@torch.no_grad()
def release_padim_fit(
    train: torch.Tensor, cov_eps: float = RELEASE_PADIM_COV_EPS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level's Gaussians from training maps ``[N, C, h, w]``, in the release's layouts.

    Returns ``(mean [C, P], cov [C, C, P], cov_inv [P, C, C])`` with ``P = h * w``: mean and
    unbiased covariance (``N - 1``) computed in float64 plus ``cov_eps * I``, cast to float32;
    the inverse is the explicit float32 inverse of that float32 covariance (as the release).
    """
    if train.dim() != 4 or train.shape[0] < 2:
        raise ValueError(f"release_padim_fit needs at least 2 training maps [N, C, h, w], got {tuple(train.shape)}")
    n, c, h, w = train.shape
    x = train.double().reshape(n, c, h * w)
    mean = x.mean(dim=0)  # [C, P]
    centred = (x - mean).permute(2, 0, 1)  # [P, N, C]
    cov = centred.transpose(1, 2) @ centred / (n - 1)  # [P, C, C]
    cov = cov + cov_eps * torch.eye(c, dtype=cov.dtype)
    cov32 = cov.float()
    return mean.float(), cov32.permute(1, 2, 0).contiguous(), torch.linalg.inv(cov32)


def release_padim_distances(test: torch.Tensor, mean: torch.Tensor, cov_inv: torch.Tensor) -> torch.Tensor:
    """``test [B, C, h, w]`` -> ``[B, h, w]``: ``sqrt((x - mu)^T cov_inv (x - mu))`` per position.

    ``mean [C, P]`` and ``cov_inv [P, C, C]`` as :func:`release_padim_fit` returns them; the form
    is evaluated in float64 (values agree with the release's to float32 rounding).
    """
    b, c, h, w = test.shape
    if tuple(mean.shape) != (c, h * w) or tuple(cov_inv.shape) != (h * w, c, c):
        raise ValueError(f"release_padim_distances: test {tuple(test.shape)} does not match the fitted mean "
                         f"{tuple(mean.shape)} / inverse {tuple(cov_inv.shape)}: fit on maps of the same shape")
    return release_mahalanobis(test.reshape(b, c, h * w), mean.T, cov_inv).reshape(b, h, w)


def release_mahalanobis(embedding: torch.Tensor, mean: torch.Tensor, cov_inv: torch.Tensor) -> torch.Tensor:
    """``embedding [B, D, P]``, ``mean [P, D]``, ``cov_inv [P, D, D]`` -> ``[B, P]`` =
    ``sqrt((x - mu)^T cov_inv (x - mu))``, evaluated in float64 (returned as float32).

    The layouts of ``PaDiMModule``'s buffers (its ``"release"`` variant stores ``cov_inv_g``).
    """
    delta = embedding.double() - mean.double().T  # [B, D, P]
    form = torch.einsum("bcp,pcd,bdp->bp", delta, cov_inv.double(), delta)
    return form.clamp(min=0).sqrt().float()


# -- FeatureNorm ------------------------------------------------------------------------------
def release_featurenorm_token_scores(features: torch.Tensor) -> torch.Tensor:
    """Release FeatureNorm token score: ``[B, D, h, w]`` -> ``[B, h, w]`` = ``sqrt(||e||_2 + 1) - 1``
    (the norm loss's A(.)), computed on each projected feature."""
    if features.dim() != 4:
        raise ValueError(f"release FeatureNorm scores [B, D, h, w] maps, got {tuple(features.shape)}")
    return torch.sqrt(features.float().norm(dim=1) + 1.0) - 1.0


def release_featurenorm_maps(
    levels: Sequence[torch.Tensor], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Release FeatureNorm end to end from projected maps ``[B, D, h_l, w_l]`` per level ->
    ``(unsmoothed [B, H, W], smoothed [B, H, W], image scores [B])`` (image score = max of the smoothed map)."""
    grids = [release_featurenorm_token_scores(f) for f in levels]
    unsmoothed = release_level_mean_map(grids, size)
    smoothed = smooth_maps(unsmoothed)
    return unsmoothed, smoothed, smoothed.flatten(1).amax(dim=1)


# -- the detector modules' release variants (modeling/detectors_adpretrain.py) ------------------
def release_patchcore_embed_levels(maps: Sequence[torch.Tensor], dim: int = RELEASE_PATCHCORE_DIM) -> torch.Tensor:
    """:func:`release_patchcore_embed` on EVERY given level ``[B, C_l, h_l, w_l]`` -> ``[B, h, w, dim]``.

    The detector already chose the levels (``layer_positions``; PatchCore's default is the last 3,
    the release's ``features[-3:]``), so the module embeds what it is given.
    """
    return release_patchcore_embed(maps, dim, num_levels=len(maps))


def release_patchcore_anomaly_map(
    grids: Sequence[torch.Tensor], size: tuple[int, int], sigma: float = GAUSSIAN_SIGMA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Release PatchCore's map from its one patch grid ``[B, h, w]`` -> ``(map [B, H, W], map max [B])``:
    bilinear ``align_corners=False``, Gaussian ``sigma`` smoothed in float64 (as scipy)."""
    up = release_level_mean_map(grids, size, align_corners=PATCHCORE_ALIGN_CORNERS)
    maps = smooth_maps(up, sigma)
    return maps, maps.flatten(1).amax(dim=1)


def release_level_mean_anomaly_map(
    grids: Sequence[torch.Tensor], size: tuple[int, int], sigma: float = GAUSSIAN_SIGMA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Release PaDiM / FeatureNorm map from per-level grids ``[B, h_l, w_l]`` -> ``(map [B, H, W], map max [B])``:
    bilinear ``align_corners=True``, level mean, Gaussian ``sigma`` smoothed in float64."""
    maps = smooth_maps(release_level_mean_map(grids, size, align_corners=LEVEL_MEAN_ALIGN_CORNERS), sigma)
    return maps, maps.flatten(1).amax(dim=1)
