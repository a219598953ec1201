"""Many penalised multinomial logistic regressions solved at once: batched, preconditioned L-BFGS.

Problem (b, q) fits class ids ``y[b, :, q]`` (``k[q]`` classes) from the rows of ``x[b]`` with
penalty ``lam[b, q]``: minimise ``sum_i w_i CE_i + lam/2 |W|^2``, the intercept unpenalised.
Every problem keeps its own L-BFGS memory, step size and stopping test, so the problems stay
independent; they share only the matrix products. The weights of all problems of a batch entry
sit side by side as rows of one ``(C, D1)`` matrix (problem q owns ``k[q]`` rows, problems
sorted by class count), so each evaluation is one wide product with ``x`` rather than one thin,
memory-bound product per class count.

Preconditioning: the initial inverse Hessian is ``(c Cov + lam)^-1`` with ``c = 1/k``, the
Hessian at the start (uniform predictions), built from one eigendecomposition of the feature
covariance per batch entry. On anisotropic features (real activations) this cuts iterations
several-fold. Once the unconverged problems fit in half the batch, the batch and the L-BFGS
memory are compacted to them, so stragglers stop paying for the converged.
"""
from __future__ import annotations

import torch

HISTORY = 10  # L-BFGS memory
_ARMIJO = 1e-4
_ROUNDING = 1e-6  # float32 losses differ by rounding near the optimum: accept such steps
_FTOL = 1e-7  # relative loss decrease that counts as no progress in float32


def eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of symmetric PSD matrices (batched), robust to ill-conditioning.

    LAPACK's divide-and-conquer solver can fail to converge on nearly singular Gram matrices
    (seen on width-512 activations); then each matrix is solved in float64 with a diagonal
    jitter of 1e-10 of its mean eigenvalue, which moves no eigenvalue measurably.
    """
    try:
        return torch.linalg.eigh(m)
    except torch.linalg.LinAlgError:
        m64 = m.to(torch.float64)
        scale = torch.diagonal(m64, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
        eye = torch.eye(m.shape[-1], dtype=m64.dtype, device=m.device)
        eigval, eigvec = torch.linalg.eigh(m64 + 1e-10 * scale[..., None, None] * eye)
        return eigval.to(m.dtype), eigvec.to(m.dtype)


def spectrum(feats: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzero spectrum (b, r) and eigenvectors (b, D, r), r = min(D, n), of the row-weighted
    feature covariance ``feats' diag(w) feats``."""
    a = feats * w[:, :, None].sqrt()
    if a.shape[2] <= a.shape[1]:
        eigval, eigvec = eigh(a.transpose(1, 2) @ a)
        return eigval.clamp_min(0), eigvec
    eigval, left = eigh(a @ a.transpose(1, 2))  # more features than rows: Gram
    eigval = eigval.clamp_min(0)
    eigvec = (a.transpose(1, 2) @ left) / eigval.clamp_min(1e-12).sqrt()[:, None, :]
    return eigval, eigvec * (eigval > 1e-12)[:, None, :]


class Problems:
    """The data of a batch of problems, and the per-problem algebra on ``(b, C, D1)`` tensors
    (weights are stored transposed: one row per class column; that orientation makes both
    products with the features wide-output GEMMs, about 1.5x faster on a CPU)."""

    def __init__(self, x, w, y, k, lam, eigval, eigvec, xt=None):
        self.x, self.w, self.y, self.k, self.lam = x, w, y, k, lam  # y: (b, Q, n)
        self.xt = x.transpose(1, 2).contiguous() if xt is None else xt
        self.eigval, self.eigvec = eigval, eigvec
        self.column_of = torch.arange(len(k), device=k.device).repeat_interleave(k)  # (C,)
        self.groups = _groups(k)

    def subset(self, keep_b: torch.Tensor, keep_q: torch.Tensor) -> "Problems":
        """The problems ``keep_q`` of batch entries ``keep_b``; the features are copied only
        when some batch entry goes (they are most of the memory)."""
        if bool(keep_b.all()):
            x, w, xt, eigval, eigvec = self.x, self.w, self.xt, self.eigval, self.eigvec
        else:
            x, w, xt = self.x[keep_b], self.w[keep_b], self.xt[keep_b]
            eigval, eigvec = self.eigval[keep_b], self.eigvec[keep_b]
        return Problems(x, w, self.y[keep_b][:, keep_q], self.k[keep_q],
                        self.lam[keep_b][:, keep_q], eigval, eigvec, xt)

    def per_problem(self, cols: torch.Tensor, how: str = "sum") -> torch.Tensor:
        """(b, C) per-column values -> (b, Q) per-problem sum (or "amax")."""
        return torch.cat([getattr(cols[:, c0:c0 + (q1 - q0) * k].view(len(cols), q1 - q0, k),
                                  how)(-1) for k, q0, q1, c0 in self.groups], dim=1)

    def spread(self, s: torch.Tensor) -> torch.Tensor:
        """(b, Q) -> (b, C, 1), broadcastable over a problem's rows of weights."""
        return s[:, self.column_of].unsqueeze(-1)

    def dot(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.per_problem((u * v).sum(2))

    def loss_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = self.x.shape
        w = self.w[:, None, None, :]  # (b, 1, 1, n)
        z = torch.bmm(theta, self.xt)  # (b, C, n)
        resid = torch.empty_like(z)
        losses = []
        for k, q0, q1, c0 in self.groups:
            zg = z[:, c0:c0 + (q1 - q0) * k].view(b, q1 - q0, k, n)
            y = self.y[:, q0:q1, None, :]
            top = zg.amax(2, keepdim=True)
            e = torch.exp(zg - top)
            total = e.sum(2, keepdim=True)
            losses.append(((top + torch.log(total) - zg.gather(2, y)) * w).sum((2, 3)))
            r = e * (w / total)
            r.scatter_add_(2, y, -w.expand(b, q1 - q0, 1, n))
            resid[:, c0:c0 + (q1 - q0) * k] = r.view(b, -1, n)
        grad = torch.bmm(resid, self.x)  # (b, C, D1)
        penalised = theta.clone()
        penalised[:, :, -1] = 0  # the intercept
        return (torch.cat(losses, dim=1) + 0.5 * self.lam * self.dot(penalised, penalised),
                grad + self.spread(self.lam) * penalised)

    def precondition(self, v: torch.Tensor) -> torch.Tensor:
        """``(c Cov + lam)^-1 v`` per problem, ``c = 1/k``; ``1/lam`` outside the covariance's
        span; the intercept has curvature ``c``."""
        curv = 1.0 / self.k[self.column_of].to(v.dtype).unsqueeze(-1)  # (C, 1)
        lam = self.lam[:, self.column_of].unsqueeze(-1)  # (b, C, 1)
        feats = v[:, :, :-1]
        rotated = torch.bmm(feats, self.eigvec)  # (b, C, r)
        gain = 1.0 / (curv * self.eigval.unsqueeze(1) + lam) - 1.0 / lam
        out = feats / lam + torch.bmm(rotated * gain, self.eigvec.transpose(1, 2))
        return torch.cat([out, v[:, :, -1:] / curv], dim=2)


def logistic(x, w, y, k, lam, eig, max_iter: int, tol: float) -> tuple[torch.Tensor, int]:
    """Fit every problem; x (B, n, D1) with an intercept column last, w (B, n) row weights,
    y (B, n, Q) class ids, k (Q,) class counts in ascending order, lam (B, Q), ``eig`` from
    :func:`spectrum`. Returns (theta (B, C, D1), number of problems still unconverged)."""
    b, _, d1 = x.shape
    data = Problems(x, w, y.transpose(1, 2).contiguous(), k, lam, *eig)
    out = torch.zeros(b, int(k.sum()), d1, dtype=x.dtype, device=x.device)
    ib = torch.arange(b, device=x.device)
    ic = torch.arange(out.shape[1], device=x.device)
    theta = out.clone()
    f, grad = data.loss_grad(theta)
    active = torch.ones_like(f, dtype=torch.bool)
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for it in range(max_iter + 1):
        active &= data.per_problem(grad.abs().amax(2), "amax") > tol
        if not active.any() or it == max_iter:
            break
        keep_b = active.any(1)
        keep_q = active[keep_b].any(0)
        if 2 * int(keep_b.sum()) * int(keep_q.sum()) <= active.numel():  # compact
            out[ib[:, None], ic[None, :]] = theta
            keep_c = keep_q[data.column_of]
            ib, ic = ib[keep_b], ic[keep_c]
            data = data.subset(keep_b, keep_q)
            theta, grad = (t[keep_b][:, keep_c] for t in (theta, grad))
            f, active = (t[keep_b][:, keep_q] for t in (f, active))
            history = [(s[keep_b][:, keep_c], yv[keep_b][:, keep_c], rho[keep_b][:, keep_q])
                       for s, yv, rho in history]
        direction = -_two_loop(data, grad, history) * data.spread(active.to(x.dtype))
        slope = data.dot(grad, direction)
        step = torch.ones_like(f)
        for _ in range(30):  # backtracking, per problem
            f_new, grad_new = data.loss_grad(theta + data.spread(step) * direction)
            ok = (f_new <= f + _ARMIJO * step * slope + _ROUNDING * f.abs()) | ~active
            if ok.all():
                break
            step = torch.where(ok, step, step / 2)
        # converged as far as float32 allows: a failed line search, or (as scipy's ftol) a
        # relative decrease of the loss below float32 resolution
        active &= ok & (f - f_new > _FTOL * torch.maximum(torch.maximum(f.abs(), f_new.abs()),
                                                         torch.ones_like(f)))
        step = torch.where(ok, step, torch.zeros_like(step))
        f_new = torch.where(ok, f_new, f)
        grad_new = torch.where(data.spread(ok), grad_new, grad)
        s, yv = data.spread(step) * direction, grad_new - grad
        sy = data.dot(s, yv)
        curved = sy > 1e-10
        history.append((s * data.spread(curved.to(x.dtype)), yv,
                        torch.where(curved, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))))
        history = history[-HISTORY:]
        theta, f, grad = theta + s, f_new, grad_new
    out[ib[:, None], ic[None, :]] = theta
    return out, int(active.sum())


def predict(x: torch.Tensor, theta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Arg-max class (b, m, Q) of every problem for rows x (b, m, D1)."""
    z = torch.bmm(x, theta.transpose(1, 2))
    b, m, _ = z.shape
    return torch.cat([z[:, :, c0:c0 + (q1 - q0) * classes].view(b, m, q1 - q0, classes).argmax(-1)
                      for classes, q0, q1, c0 in _groups(k)], dim=2)


def nll(x: torch.Tensor, theta: torch.Tensor, k: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood in nats (b, m, Q) of class ids ``y`` (b, m, Q) under every problem's
    softmax, for rows x (b, m, D1)."""
    z = torch.bmm(x, theta.transpose(1, 2))
    b, m, _ = z.shape
    out = []
    for classes, q0, q1, c0 in _groups(k):
        zg = z[:, :, c0:c0 + (q1 - q0) * classes].view(b, m, q1 - q0, classes)
        out.append(torch.logsumexp(zg, -1) - zg.gather(-1, y[:, :, q0:q1, None]).squeeze(-1))
    return torch.cat(out, dim=2)


def _groups(k: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Runs of problems with equal class counts: (classes, first problem, end, first column)."""
    groups, start, column = [], 0, 0
    for classes, count in zip(*torch.unique_consecutive(k, return_counts=True)):
        classes, count = int(classes), int(count)
        groups.append((classes, start, start + count, column))
        start, column = start + count, column + count * classes
    return groups


def _two_loop(data: Problems, grad: torch.Tensor, history) -> torch.Tensor:
    """L-BFGS inverse-Hessian product, every problem with its own memory; the initial inverse
    Hessian is the preconditioner itself (rescaling it by the latest curvature pair, as plain
    L-BFGS does, cost more iterations on real activations)."""
    q, alphas = grad.clone(), []
    for s, y, rho in reversed(history):
        a = rho * data.dot(s, q)
        alphas.append(a)
        q -= data.spread(a) * y
    q = data.precondition(q)
    for (s, y, rho), a in zip(history, reversed(alphas)):
        q += data.spread(a - rho * data.dot(y, q)) * s
    return q
