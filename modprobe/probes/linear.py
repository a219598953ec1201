"""Linear probes: two engines behind one function, ``fit_predict``.

Every probe is fitted on features standardised on its training rows. Discrete labels get a
multinomial logistic regression with an L2 penalty on the weights (not the intercept), with
scikit-learn's objective ``C * sum(cross-entropy) + |W|^2 / 2``; continuous labels get ridge,
``sum((y - Xw - b)^2) + alpha * |w|^2``.

- ``engine="sklearn"``: ``LogisticRegression`` / ``Ridge``, one fit at a time: the reference.
- ``engine="torch"``: all probes of a chunk of (hook, split) pairs at once, on the GPU when there
  is one. Ridge in closed form through one eigendecomposition per pair, which gives every alpha
  and label set for the price of one. Logistic regression by the batched, preconditioned
  L-BFGS of :mod:`.solver`, in which every problem keeps its own memory, step size and
  stopping test (one L-BFGS over the summed loss would couple the problems through a shared
  line search and slow them all to the worst one).
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from itertools import product
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import solver
from .folds import Split

ENGINES = ("torch", "sklearn")
_CHUNK_BYTES = 1 << 30  # working memory of one batched solve
_SMALL_WORK = 10 ** 8  # multiply-adds per pass below which a chunk runs on one CPU thread
# A feature is scaled by at most 1 / (SCALE_FLOOR x the RMS spread of the layer's features) when it
# is standardised: a unit nearly constant on a fold's training rows (a ReLU that fires for a few
# combinations) would otherwise be blown up on the evaluation rows where it varies, and one such
# unit can push a ridge probe's out-of-fold R^2 to -1000 (seen on untrained width-512 MLPs).
SCALE_FLOOR = 1e-2


def feature_scale(std: torch.Tensor) -> torch.Tensor:
    """The divisor that standardises each feature: its spread, floored at ``SCALE_FLOOR`` times
    the root-mean-square spread of all features (1 where every feature is constant)."""
    floor = SCALE_FLOOR * std.pow(2).mean().sqrt()
    scale = std.clamp_min(float(floor))
    return torch.where(scale < 10 * torch.finfo(std.dtype).eps, torch.ones_like(scale), scale)


def fit_predict(features: Sequence[torch.Tensor], splits: Sequence[Split], labels: torch.Tensor,
                n_classes: Sequence[int] | None, reg: np.ndarray, *, engine: str = "torch",
                max_iter: int = 1000, tol: float = 1e-6, device: str | None = None,
                progress: bool = False, desc: str = "probes", output: str = "predict",
                threads: int | None = None) -> list[list[torch.Tensor]]:
    """Predictions of every probe on its split's evaluation rows: ``out[h][s]`` is
    ``(n_eval, L, G)``.

    ``features[h]``: (R, D) rows of hook h; ``splits[s]``: (training rows, evaluation rows);
    ``labels``: (L, R) class ids in ``0..n_classes[l]-1``, or floats when ``n_classes`` is None;
    ``reg``: (H, S, L, G) the C (logistic) or alpha (ridge) of every probe.
    ``output="nll"`` (logistic only): the negative log-likelihood in nats of each evaluation
    row's true label instead of the predicted class (``inf`` where sklearn never saw that class).
    ``threads``: CPU threads of either engine (None: :func:`free_cores`).
    """
    if output not in ("predict", "nll") or (output == "nll" and n_classes is None):
        raise ValueError(f"output must be 'predict', or 'nll' for class labels; got {output!r}")
    threads = threads or free_cores()
    if engine == "sklearn":
        return _sklearn(features, splits, labels, n_classes, reg, max_iter, tol, progress, desc,
                        output, threads)
    if engine != "torch":
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out: list[list[torch.Tensor]] = [[torch.empty(0)] * len(splits) for _ in features]
    stuck = 0
    for pairs, work in tqdm(_chunks(features, splits, labels, n_classes, reg), desc=desc,
                            disable=not progress, leave=False):
        with _threads(1 if dev.type == "cpu" and work < _SMALL_WORK else threads):
            if n_classes is None:
                preds = _ridge_chunk(pairs, features, splits, labels, reg, dev)
            else:
                preds, unconverged = _logistic_chunk(pairs, features, splits, labels, n_classes,
                                                     reg, dev, max_iter, tol, output)
                stuck += unconverged
        for (h, s), pred in zip(pairs, preds):
            out[h][s] = pred
    _warn_unconverged(stuck, max_iter)
    return out


def free_cores(sample: float = 0.1) -> int:
    """CPU threads worth using now: the cores this process may run on that were idle over the
    last ``sample`` seconds (from ``/proc/stat``; elsewhere the cores less the 1-minute load
    average), at least 1, at most torch's setting. ``MODPROBE_THREADS`` overrides it.

    A torch (OpenMP) thread that waits for a busy core stalls every other thread at the next
    barrier, so on a shared machine oversubscribed threads cost far more than they save."""
    fixed = os.environ.get("MODPROBE_THREADS")
    if fixed:
        return max(1, int(fixed))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    idle = _idle_cores(sample)
    if idle is None:
        try:
            idle = cores - os.getloadavg()[0]
        except OSError:
            idle = cores
    return max(1, min(torch.get_num_threads(), cores, int(idle + 0.5)))


def _idle_cores(sample: float) -> float | None:
    """Cores the whole machine left idle over ``sample`` seconds (this process sleeps meanwhile,
    so its own threads do not count as load), or None without ``/proc/stat``."""
    def read() -> tuple[list[int], int]:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        n_cpu = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        return [int(v) for v in lines[0].split()[1:9]], n_cpu

    try:
        before, n_cpu = read()
        time.sleep(sample)
        after, _ = read()
    except (OSError, ValueError, IndexError):
        return None
    delta = [a - b for a, b in zip(after, before)]
    total = sum(delta)
    return n_cpu * (delta[3] + delta[4]) / total if total > 0 else None  # idle + iowait


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads for a while (``None``: as configured). Small
    batches run on one thread: there, every operation that wakes a second thread costs more
    than it saves, and on a busy shared machine (a thread waiting for a core) far more."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _warn_unconverged(stuck: int, max_iter: int) -> None:
    if stuck:
        warnings.warn(f"{stuck} logistic probes did not converge in max_iter={max_iter} "
                      "iterations; raise max_iter", stacklevel=3)


# --------------------------------------------------------------------- torch engine
def _chunks(features, splits, labels, n_classes, reg) -> list[tuple[list[tuple[int, int]], int]]:
    """(hook, split) pairs grouped by feature width, in chunks that fit ``_CHUNK_BYTES``, each
    with its multiply-adds per pass over the features (its work)."""
    width = reg.shape[-1] * (sum(n_classes) if n_classes else labels.shape[0])
    chunks: list[tuple[list[tuple[int, int]], int]] = []
    used, last_dim = 0, None
    for h, s in product(range(len(features)), range(len(splits))):
        d = features[h].shape[1] + 1
        n_train, n_eval = len(splits[s][0]), len(splits[s][1])
        cost = 4 * ((2 * n_train + n_eval) * d + 5 * n_train * width
                    + (2 * solver.HISTORY + 6) * d * width + d * min(d, n_train))
        if n_classes is None:
            cost = 8 * ((n_train + n_eval) * d + 3 * min(d, n_train) ** 2 + d * width)
        if not chunks or d != last_dim or used + cost > _CHUNK_BYTES:
            chunks.append(([], 0))
            used, last_dim = 0, d
        pairs, work = chunks[-1]
        pairs.append((h, s))
        chunks[-1] = (pairs, work + n_train * d * width)
        used += cost
    return chunks


def _standardised(pairs, features, splits, dev, dtype):
    """Padded ``(train features, train row mask, train row ids, eval features)`` of a chunk."""
    n_train = max(len(splits[s][0]) for _, s in pairs)
    n_eval = max(len(splits[s][1]) for _, s in pairs)
    d = features[pairs[0][0]].shape[1]
    x_tr = torch.zeros(len(pairs), n_train, d, dtype=dtype, device=dev)
    x_ev = torch.zeros(len(pairs), n_eval, d, dtype=dtype, device=dev)
    mask = torch.zeros(len(pairs), n_train, dtype=torch.bool, device=dev)
    rows = torch.zeros(len(pairs), n_train, dtype=torch.long)
    converted: dict[int, torch.Tensor] = {}
    for b, (h, s) in enumerate(pairs):
        train, evaluate = (torch.as_tensor(i) for i in splits[s])
        if h not in converted:
            converted = {h: features[h].to(dev, dtype)}
        x = converted[h]
        mean, std = x[train].mean(0), feature_scale(x[train].std(0, unbiased=False))
        x_tr[b, :len(train)] = (x[train] - mean) / std
        x_ev[b, :len(evaluate)] = (x[evaluate] - mean) / std
        mask[b, :len(train)] = True
        rows[b, :len(train)] = train
    return x_tr, mask, rows, x_ev


def _per_problem(reg, pairs) -> torch.Tensor:
    return torch.as_tensor(np.stack([reg[h, s] for h, s in pairs]))


def _ridge_chunk(pairs, features, splits, labels, reg, dev) -> list[torch.Tensor]:
    x, mask, rows, x_ev = _standardised(pairs, features, splits, dev, torch.float64)
    weights = mask.to(x.dtype).unsqueeze(-1)
    y = labels.to(torch.float64)[:, rows].permute(1, 2, 0).to(dev) * weights  # (B, n, L)
    y_mean = y.sum(1, keepdim=True) / weights.sum(1, keepdim=True)
    y = (y - y_mean) * weights
    x = x * weights
    alpha = _per_problem(reg, pairs).to(dev, torch.float64)  # (B, L, G)
    if x.shape[2] <= x.shape[1]:  # primal: (X'X + alpha) w = X'y
        eigval, eigvec = solver.eigh(x.transpose(1, 2) @ x)
        proj = eigvec.transpose(1, 2) @ (x.transpose(1, 2) @ y)  # (B, D, L)
        coef = torch.einsum("bdk,bklg->bdlg", eigvec,
                            proj.unsqueeze(-1) / (eigval[:, :, None, None] + alpha[:, None]))
    else:  # dual: w = X'(XX' + alpha)^-1 y, cheaper when examples < features
        eigval, eigvec = solver.eigh(x @ x.transpose(1, 2))
        proj = eigvec.transpose(1, 2) @ y  # (B, n, L)
        coef = torch.einsum("bnd,bnk,bklg->bdlg", x, eigvec,
                            proj.unsqueeze(-1) / (eigval[:, :, None, None] + alpha[:, None]))
    pred = torch.einsum("bmd,bdlg->bmlg", x_ev, coef) + y_mean.unsqueeze(-1)
    return [pred[b, :len(splits[s][1])].float().cpu() for b, (_, s) in enumerate(pairs)]


def _logistic_chunk(pairs, features, splits, labels, n_classes, reg, dev, max_iter, tol,
                    output="predict"):
    x, mask, rows, x_ev = _standardised(pairs, features, splits, dev, torch.float32)
    ones = mask.to(x.dtype).unsqueeze(-1)
    x = torch.cat([x * ones, ones], dim=2)  # last column: the intercept
    x_ev = torch.cat([x_ev, torch.ones_like(x_ev[..., :1])], dim=2)
    n = mask.sum(1).to(x.dtype)
    w = ones.squeeze(-1) / n[:, None]
    n_sets, n_reg = reg.shape[2], reg.shape[3]
    # problem q = (label set, grid value), sorted by class count as the solver wants
    order = sorted(range(n_sets), key=lambda l: n_classes[l])
    set_of = torch.as_tensor(order).repeat_interleave(n_reg)
    k = torch.as_tensor([n_classes[l] for l in order]).repeat_interleave(n_reg)
    lam = 1.0 / (_per_problem(reg, pairs)[:, order].reshape(len(pairs), -1).to(x.dtype)
                 * n.cpu()[:, None])
    # two classes: scikit-learn fits one weight vector v (penalty |v|^2 / 2); the symmetric
    # two-column softmax has v = w1 - w0 = 2 w1, penalty |v|^2 / 4. Doubling lam matches.
    lam = lam * torch.where(k == 2, 2.0, 1.0)
    y = labels[:, rows].permute(1, 2, 0)[:, :, set_of]
    theta, stuck = solver.logistic(x, w, y.to(dev), k.to(dev), lam.to(dev),
                                   solver.spectrum(x[:, :, :-1], w), max_iter, tol)
    if output == "nll":
        evaluate = [torch.as_tensor(splits[s][1]) for _, s in pairs]
        y_ev = torch.zeros(len(pairs), x_ev.shape[1], n_sets, dtype=torch.long)
        for b, rows_ev in enumerate(evaluate):
            y_ev[b, :len(rows_ev)] = labels[:, rows_ev].T
        best = solver.nll(x_ev, theta, k.to(dev), y_ev[:, :, set_of].to(dev))
    else:
        best = solver.predict(x_ev, theta, k.to(dev))
    best = best.cpu().view(len(pairs), -1, n_sets, n_reg)
    pred = torch.empty_like(best)
    pred[:, :, order] = best
    return [pred[i, :len(splits[s][1])] for i, (_, s) in enumerate(pairs)], stuck


# --------------------------------------------------------------------- sklearn engine
def _sklearn(features, splits, labels, n_classes, reg, max_iter, tol, progress, desc,
             output="predict", threads=1):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y_all = labels.numpy()
    n_sets, n_reg = reg.shape[2], reg.shape[3]
    out: list[list[torch.Tensor]] = [[torch.empty(0)] * len(splits) for _ in features]
    work = (max(len(train) for train, _ in splits) * max(f.shape[1] for f in features)
            * (sum(n_classes) if n_classes else n_sets))
    stuck = 0
    with threadpool_limits(1 if work < _SMALL_WORK else threads):  # as _threads
        for h, s in tqdm(list(product(range(len(features)), range(len(splits)))), desc=desc,
                         disable=not progress, leave=False):
            train, evaluate = splits[s]
            x = features[h].double().numpy()
            scaler = StandardScaler().fit(x[train])
            scaler.scale_ = feature_scale(torch.from_numpy(np.sqrt(scaler.var_))).numpy()
            x_tr, x_ev = scaler.transform(x[train]), scaler.transform(x[evaluate])
            pred = np.zeros((len(evaluate), n_sets, n_reg))
            for l, g in product(range(n_sets), range(n_reg)):
                y = y_all[l, train]
                if n_classes is None:
                    pred[:, l, g] = Ridge(alpha=reg[h, s, l, g]).fit(x_tr, y).predict(x_ev)
                elif len(np.unique(y)) < 2:
                    pred[:, l, g] = y[0] if output == "predict" else np.where(
                        y_all[l, evaluate] == y[0], 0.0, np.inf)
                else:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", ConvergenceWarning)
                        model = LogisticRegression(C=reg[h, s, l, g], max_iter=max_iter, tol=tol)
                        model.fit(x_tr, y)
                    stuck += any(issubclass(c.category, ConvergenceWarning) for c in caught)
                    if output == "predict":
                        pred[:, l, g] = model.predict(x_ev)
                    else:  # classes never seen in training have probability 0
                        logp = np.full((len(evaluate), n_classes[l]), -np.inf)
                        with np.errstate(divide="ignore"):  # log(0): a certain mistake
                            logp[:, model.classes_] = model.predict_log_proba(x_ev)
                        pred[:, l, g] = -logp[np.arange(len(evaluate)), y_all[l, evaluate]]
            out[h][s] = torch.as_tensor(pred, dtype=torch.long if output == "predict" and n_classes
                                        else torch.float32)
    _warn_unconverged(stuck, max_iter)
    return out
