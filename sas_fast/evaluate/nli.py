"""Noisy Linear Imputation (ROAD, Rong et al. ICML 2022), docs/SPEC.md section 5.

Every removed pixel ``i`` is the weighted mean of its in-image 8 neighbours ``N(i)``:
``W_i x_i = sum_{j in N(i)} w_ij x_j`` with ``w = 1/6`` (axial), ``1/12`` (diagonal) and
``W_i = sum_{j in N(i)} w_ij`` (1 inside, 2/3 on an edge, 5/12 in a corner); kept pixels
are fixed. For the unknowns this is ``A u = b`` with ``A = (D - W)`` restricted to the
removed pixels (the graph Laplacian, symmetric positive definite when at least one pixel
is kept) and ``b_i = sum_{j kept} w_ij x_j``; all channels share ``A``. Then Gaussian noise
of std ``noise`` is added to the imputed pixels only. With nothing kept the system is
singular: the result is zeros plus the noise.

Solvers (one result, agreeing to 1e-4 max abs): ``"scipy"``, a sparse direct solve per
image (SuperLU, the reference, CPU); ``"torch"`` (= ``"auto"``), multigrid-preconditioned
conjugate gradients batched over images and channels, on any device, no scipy needed (on
one CPU thread: about as fast as scipy at 224 x 224, faster at 32 x 32 in batches).
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from ..checks import is_real, warn_caller

AXIAL, DIAGONAL = 1.0 / 6.0, 1.0 / 12.0
SOLVERS = ("auto", "scipy", "torch")
#: (dy, dx, weight) of the 8 neighbours.
NEIGHBOURS = [(dy, dx, AXIAL if dy == 0 or dx == 0 else DIAGONAL)
              for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def neighbour_mean(images: torch.Tensor) -> torch.Tensor:
    """``B x C x H x W`` -> the border-renormalised weighted mean of every pixel's 8 neighbours,
    ``sum_j w_ij x_j / W_i`` (the fixed point every imputed pixel satisfies)."""
    return _stencil(images) / _stencil(images.new_ones(1, 1, *images.shape[-2:]))


def nli_impute(images: torch.Tensor, keep: torch.Tensor, noise: float = 0.01,
               generator: torch.Generator | None = None, solver: str = "auto") -> torch.Tensor:
    """Fill the pixels where ``keep`` is False by Noisy Linear Imputation.

    Args:
        images: ``B x C x H x W`` floating point, in the model's input space.
        keep: ``B x H x W`` bool, True = known pixel (kept unchanged).
        noise: std of the Gaussian noise added to the imputed pixels.
        generator: CPU ``torch.Generator`` for the noise (drawn as one ``B x C x H x W``
            standard normal, whatever the mask, so results are reproducible).
        solver: ``"scipy"`` (reference), ``"torch"`` or ``"auto"`` (= torch: batched, any device).

    Returns:
        ``B x C x H x W``, the images' dtype and device.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not (is_real(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor (True = known pixel), got "
                         f"{getattr(keep, 'dtype', type(keep).__name__)}; threshold a fractional mask "
                         "first (e.g. keep > 0.5)")
    if images.dim() != 4 or keep.shape != (images.shape[0],) + images.shape[2:]:
        raise ValueError(f"need images B x C x H x W and keep B x H x W, got {tuple(images.shape)} "
                         f"and {tuple(keep.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")
    images, keep = images.detach(), keep.to(images.device)
    known = keep.flatten(1).any(1)
    todo = known & ~keep.flatten(1).all(1)
    out = torch.where(keep[:, None], images, torch.zeros_like(images))
    if bool(todo.any()):
        x, k = images[todo].double(), keep[todo]
        filled = _solve_scipy(x, k) if solver == "scipy" else _solve_torch(x, k)
        out[todo] = filled.to(images.dtype)
    if noise:
        eps = torch.randn(images.shape, generator=generator, dtype=torch.float32)
        out = out + (noise * eps).to(out) * ~keep[:, None]
    return out


def _box(x: torch.Tensor) -> torch.Tensor:
    """The separable 3 x 3 sum with kernel ``[1 2 1]^T [1 2 1]`` (zero padding), any ``... x H x W``."""
    xp = F.pad(x, (1, 1, 1, 1))
    rows = torch.add(xp[..., :-2], xp[..., 2:]).add_(xp[..., 1:-1], alpha=2)
    return torch.add(rows[..., :-2, :], rows[..., 2:, :]).add_(rows[..., 1:-1, :], alpha=2)


def _stencil(x: torch.Tensor) -> torch.Tensor:
    """``sum_j w_ij x_j`` over in-image neighbours (zero padding): ``(box(x) - 4 x) / 12``."""
    return (_box(x) - 4 * x) / 12


def _restrict(r: torch.Tensor) -> torch.Tensor:
    """``P^T r``: sum over 2 x 2 blocks."""
    return r[..., ::2, ::2] + r[..., 1::2, ::2] + r[..., ::2, 1::2] + r[..., 1::2, 1::2]


def _prolong(e: torch.Tensor) -> torch.Tensor:
    """``P e``: every coarse value copied to its 2 x 2 block."""
    n, c, h, w = e.shape
    return e[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


def _solve_scipy(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Sparse direct solve (SuperLU), one image at a time, all channels as right-hand sides."""
    import scipy.sparse
    import scipy.sparse.linalg

    out = images.detach().cpu().numpy().copy()
    keep_np = keep.cpu().numpy()
    _, c, h, w = out.shape
    for img, kp in zip(out, keep_np):
        unknown = np.flatnonzero(~kp.ravel())
        index = np.full(h * w, -1)
        index[unknown] = np.arange(unknown.size)
        yy, xx = np.divmod(unknown, w)
        flat = img.reshape(c, -1)
        rows, cols, vals = [], [], []
        diag = np.zeros(unknown.size)
        rhs = np.zeros((unknown.size, c))
        for dy, dx, wt in NEIGHBOURS:
            ny, nx = yy + dy, xx + dx
            inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            i, j = np.flatnonzero(inside), ny[inside] * w + nx[inside]
            diag[i] += wt
            free = index[j] >= 0
            rows.append(i[free])
            cols.append(index[j[free]])
            vals.append(np.full(free.sum(), -wt))
            np.add.at(rhs, i[~free], wt * flat[:, j[~free]].T)
        rows.append(np.arange(unknown.size))
        cols.append(np.arange(unknown.size))
        vals.append(diag)
        a = scipy.sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                    shape=(unknown.size, unknown.size))
        sol = scipy.sparse.linalg.spsolve(a, rhs)
        flat[:, unknown] = sol.reshape(unknown.size, c).T
    return torch.from_numpy(out).to(images.device)


def _offsets():
    return [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _apply(stencil: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(A v)_i = sum_k S_k,i v_{i + offset_k}``: ``stencil`` ``N x 9 x H x W``, ``v`` ``N x C x H x W``."""
    h, w = v.shape[-2:]
    vp = F.pad(v, (1, 1, 1, 1))
    out = stencil[:, 4:5] * v
    for k, (dy, dx) in enumerate(_offsets()):
        if k != 4:
            out.addcmul_(stencil[:, k:k + 1], vp[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
    return out


def _fine_stencil(keep: torch.Tensor, dtype) -> torch.Tensor:
    """The 3 x 3 stencil of ``A`` (``N x 9 x H x W``); rows and columns of kept pixels are zero."""
    unk = (~keep[:, None]).to(dtype)
    h, w = keep.shape[-2:]
    wsum = _stencil(unk.new_ones(1, 1, h, w))
    up = F.pad(unk, (1, 1, 1, 1))
    weight = {(dy, dx): wt for dy, dx, wt in NEIGHBOURS}
    return torch.cat([wsum * unk if (dy, dx) == (0, 0)
                      else -weight[dy, dx] * unk * up[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                      for dy, dx in _offsets()], 1)


def _coarsen(stencil: torch.Tensor) -> torch.Tensor:
    """Galerkin ``P^T A P`` for piecewise-constant ``P`` on 2 x 2 blocks (H, W even): again 3 x 3."""
    n, _, h, w = stencil.shape
    index = {d: k for k, d in enumerate(_offsets())}
    coarse = stencil.new_zeros(n, 9, h // 2, w // 2)
    for py in (0, 1):
        for px in (0, 1):
            for k, (dy, dx) in enumerate(_offsets()):
                d = ((py + dy) // 2, (px + dx) // 2)
                coarse[:, index[d]] += stencil[:, k, py::2, px::2]
    return coarse


def _dense(stencil: torch.Tensor) -> torch.Tensor:
    """``N x 9 x h x w`` stencil -> dense ``N x hw x hw`` matrix (rows of inactive pixels: identity)."""
    n, _, h, w = stencil.shape
    dense = stencil.new_zeros(n, h * w, h * w)
    yy, xx = torch.meshgrid(torch.arange(h, device=stencil.device), torch.arange(w, device=stencil.device),
                            indexing="ij")
    rows = (yy * w + xx).flatten()
    for k, (dy, dx) in enumerate(_offsets()):
        ny, nx = (yy + dy).flatten(), (xx + dx).flatten()
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        dense[:, rows[ok], (ny * w + nx)[ok]] = stencil[:, k].flatten(1)[:, ok]
    inactive = stencil[:, 4].flatten(1) <= 0
    return dense + torch.diag_embed(inactive.to(dense.dtype))


def _solve_torch(images: torch.Tensor, keep: torch.Tensor, tol: float = 1e-7, smooth: int = 1,
                 omega: float = 0.8, boost: float = 1.5, coarsest: int = 64,
                 max_iter: int = 100, refine: int = 6) -> torch.Tensor:
    """Multigrid-preconditioned conjugate gradients, batched over images and channels.

    Mixed precision: iterative refinement in float64 (``r = b - A u``, at most ``refine``
    rounds) until ``max_i |r_i / W_i| < tol`` (the fixed-point defect, in image units; 1e-7
    gives about 1e-6 max abs error at 224 px); each round solves ``A d = r`` in float32 by
    flexible (Polak-Ribiere) CG, at most ``max_iter`` iterations, to a 1e-5 smaller defect.
    Preconditioner: one symmetric V-cycle. Levels: the fine grid zero-padded to a
    multiple of ``2^L`` (``L`` the fewest halvings leaving at most ``coarsest`` pixels), coarse
    operators ``P^T A P`` with piecewise-constant ``P`` on 2 x 2 blocks, the coarsest solved by
    its dense inverse; ``smooth`` damped-Jacobi sweeps (``omega``) before and after the coarse
    correction, which is scaled by ``boost`` (over-correction, usual for piecewise-constant ``P``).
    """
    h, w = images.shape[-2:]
    depth = 0
    while -(-h // 2 ** depth) * -(-w // 2 ** depth) > coarsest:
        depth += 1
    pad = (0, -w % 2 ** depth, 0, -h % 2 ** depth)
    x = F.pad(images * keep[:, None], pad)
    unknown = F.pad((~keep[:, None]).to(images.dtype), pad)
    wsum = F.pad(_stencil(images.new_ones(1, 1, h, w)), pad, value=1.0)
    stencils = [F.pad(12 * _fine_stencil(keep, torch.float32), pad)]
    for _ in range(depth):
        stencils.append(_coarsen(stencils[-1]))
    active = [(s[:, 4:5] > 0).float() for s in stencils]
    jacobi = [torch.where(on > 0, omega / s[:, 4:5], torch.zeros_like(s[:, 4:5]))
              for s, on in zip(stencils, active)]
    inverse = torch.linalg.inv(_dense(stencils[-1]))
    diag, unknown32 = 12 * wsum.float(), unknown.float()
    centre = diag + 4

    def operator(level, v):
        """``12 A v`` (the float32 system is scaled by 12: ``12 A v = (12 W + 4) v - box(v)``)."""
        if level == 0:
            return torch.addcmul(_box(v).neg_(), centre, v).mul_(unknown32)
        return _apply(stencils[level], v)

    def vcycle(level, r):
        if level == depth:
            n, c, hh, ww = r.shape
            e = r.reshape(n, c, hh * ww) @ inverse.transpose(1, 2)
            return e.reshape(n, c, hh, ww) * active[level]
        e = jacobi[level] * r
        for _ in range(smooth - 1):
            e.addcmul_(jacobi[level], r - operator(level, e))
        coarse = vcycle(level + 1, _restrict(r - operator(level, e)))
        e.addcmul_(_prolong(boost * coarse), active[level])
        for _ in range(smooth):
            e.addcmul_(jacobi[level], r - operator(level, e))
        return e

    def pcg(r, goal):
        """Float32 flexible PCG on ``12 A d = r`` until ``max |r_i / 12 W_i| < goal``; returns ``d``."""
        d = torch.zeros_like(r)
        p = z = vcycle(0, r)
        rz = (r * z).sum((2, 3), keepdim=True)
        for _ in range(max_iter):
            if float((r / diag).abs().amax()) < goal:
                break
            ap = operator(0, p)
            pap = (p * ap).sum((2, 3), keepdim=True)
            alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-30), torch.zeros_like(pap))
            d.addcmul_(alpha, p)
            r = torch.addcmul(r, alpha, ap, value=-1)
            z, z_old = vcycle(0, r), z
            rz_new = (r * z).sum((2, 3), keepdim=True)
            change = rz_new - (r * z_old).sum((2, 3), keepdim=True)
            beta = torch.where(rz > 0, change / rz.clamp_min(1e-30), torch.zeros_like(rz))
            p = torch.addcmul(z, beta, p)
            rz = rz_new
        return d

    u = torch.zeros_like(x)
    b = _stencil(x) * unknown
    for step in range(refine + 1):
        r = b - (wsum * u - _stencil(u)) * unknown
        defect = float((r / wsum).abs().amax())
        if defect < tol:
            break
        if step == refine:
            warn_caller(f"NLI solver stopped after {refine} refinements at defect {defect:.1e} > "
                        f"{tol:.0e}")
        else:
            u = u + pcg(12 * r.float(), max(tol, defect * 1e-5)).to(u.dtype)
    return (x + u)[..., :h, :w]
