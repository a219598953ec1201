"""Where cells run: local worker processes (default) or a Ray cluster.

Both call :func:`.cell.run_cell` once per cell and return ``{cell id: payload}``; neither
schedules anything itself. Locally a ``concurrent.futures`` process pool runs the cells and a
pool broken by a dead worker is replaced (up to ``max_retries`` times) for the cells not yet
finished. On Ray each cell is a task with ``num_cpus=threads``, ``num_gpus`` when the cluster has
GPUs and ``max_retries`` for worker or node loss; Ray schedules them. A cell whose analysis
raises is not retried: the error is collected and reported after the other cells finished.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from .cell import run_cell
from .spec import Cell

BACKENDS = ("local", "ray")
Payloads = dict[str, dict[str, Any]]


class SweepError(RuntimeError):
    """Some cells failed; the others finished and are saved (a rerun retries only the failed)."""

    def __init__(self, errors: dict[str, str], done: "Payloads | None" = None):
        self.errors, self.done = errors, done or {}
        lines = "\n".join(f"  cell {cid}: {err}" for cid, err in errors.items())
        super().__init__(f"{len(errors)} cell(s) failed; the others are saved and a rerun "
                         f"retries only these:\n{lines}")


def run_local(cells: Sequence[Cell], root: str, *, workers: int, threads: int,
              device: str | None, max_retries: int, progress: bool) -> Payloads:
    """Run ``cells`` in ``workers`` processes (``workers=1``: one by one in this process)."""
    done: Payloads = {}
    errors: dict[str, str] = {}
    bar = tqdm(total=len(cells), desc="cells", disable=not progress)
    if workers <= 1:
        for cell in cells:
            try:
                done[cell.id] = run_cell(cell.to_dict(), root, threads, device)
            except Exception as err:  # noqa: BLE001 - reported with the cell after the others
                errors[cell.id] = f"{type(err).__name__}: {err}"
            bar.update()
    else:
        pending, breaks = list(cells), 0
        while pending:
            try:
                _pool_round(pending, root, workers, threads, device, done, errors, bar.update)
                pending = []
            except BrokenProcessPool:
                breaks += 1
                pending = [c for c in pending if c.id not in done and c.id not in errors]
                if breaks > max_retries:
                    errors.update({c.id: "a worker process died on every attempt (a script "
                                   "that calls sweep() needs an `if __name__ == '__main__':` "
                                   "guard: workers are started by spawn, which imports it)"
                                   for c in pending})
                    pending = []
    bar.close()
    if errors:
        raise SweepError(errors, done)
    return done


def _pool_round(cells: Sequence[Cell], root: str, workers: int, threads: int,
                device: str | None, done: Payloads, errors: dict[str, str],
                advance: Callable[[], Any]) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    with ProcessPoolExecutor(max_workers=min(workers, len(cells)), mp_context=context) as pool:
        futures = {pool.submit(run_cell, c.to_dict(), root, threads, device): c for c in cells}
        while futures:
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = futures.pop(future)
                error = future.exception()
                if isinstance(error, BrokenProcessPool):
                    raise error
                if error is None:
                    done[cell.id] = future.result()
                else:
                    errors[cell.id] = f"{type(error).__name__}: {error}"
                advance()


def run_ray(cells: Sequence[Cell], root: str, *, address: str | None, threads: int,
            gpus_per_cell: float | None, device: str | None, max_retries: int,
            progress: bool) -> Payloads:
    """Run ``cells`` as Ray tasks on the cluster at ``address`` (``None``: start a local one).

    An already connected Ray session (``ray.is_initialized()``) is used as it is.
    """
    try:
        import ray
    except ImportError as err:
        raise ImportError("the Ray backend needs the 'distributed' extra: "
                          "pip install 'modprobe[distributed]'") from err
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False)
    try:
        if gpus_per_cell is None:
            gpus_per_cell = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        if gpus_per_cell and device in (None, "auto"):
            device = "cuda"
        task = ray.remote(run_cell).options(num_cpus=threads, num_gpus=gpus_per_cell,
                                            max_retries=max_retries, retry_exceptions=False)
        refs = {task.remote(c.to_dict(), root, threads, device): c for c in cells}
        done: Payloads = {}
        errors: dict[str, str] = {}
        with tqdm(total=len(cells), desc="cells (ray)", disable=not progress) as bar:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    cell = refs.pop(ref)
                    try:
                        done[cell.id] = ray.get(ref)
                    except (ray.exceptions.RayTaskError, ray.exceptions.RayError) as err:
                        errors[cell.id] = str(err).strip().splitlines()[-1]
                    bar.update()
    finally:
        if started:
            ray.shutdown()
    if errors:
        raise SweepError(errors, done)
    return done
