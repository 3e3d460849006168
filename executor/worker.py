"""One executor worker (one GPU or one CPU rank): a plain class that Ray turns into an actor.

The class itself imports neither Ray nor the driver: :mod:`moe_placement.executor.group` wraps it with
``ray.remote``. A worker joins a torch.distributed group (gloo on CPU, NCCL on CUDA), holds the expert
weights of its slots, replays layers and runs the calibration microbenchmarks.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import numpy as np

from moe_placement.executor.routing import RankLayer

# Messages a worker raises start with this tag so the driver can name the fault in one line.
OOM_TAG = "worker out of memory"


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "can't allocate memory" in text or "out of memory" in text


def _host_id() -> str:
    """This machine's name and boot: processes that agree on it read the same CLOCK_MONOTONIC."""
    import platform

    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = ""
    return f"{platform.node()}:{boot}"


def free_port() -> int:
    """A TCP port that is free now on this host (the rendezvous port for the process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class ExecutorWorker:
    """Rank ``rank`` of ``world``; ``threads`` torch intra-op threads (CPU ranks share the cores)."""

    def __init__(self, rank: int, world: int, threads: int) -> None:
        import torch

        self.rank = rank
        self.world = world
        torch.set_num_threads(max(1, threads))
        self.group: Any = None
        self.device: Any = None
        self.dtype: Any = None
        self.layers: list[list[Any]] = []
        self.stage2: list[bool] = []
        self.experts: list[list[tuple[Any, Any, Any]]] = []
        self.seed = 0
        self.steps = 0  # layers replayed so far: the driver's heartbeat

    def progress(self) -> int:
        """Layers replayed so far (answered from a second actor thread while a replay runs)."""
        return self.steps

    # ---- set-up ------------------------------------------------------------------------------------

    def rendezvous(self) -> tuple[str, int, int]:
        """(this node's IP, a free port, pid): rank 0's answer becomes the group's master address."""
        import ray

        return ray.util.get_node_ip_address(), free_port(), os.getpid()

    def setup(self, master: str, port: int, backend: str, timeout_s: float) -> dict[str, Any]:
        """Join the process group; return what this rank runs on and the memory it has free."""
        import datetime

        import torch
        import torch.distributed as dist

        if backend == "nccl":
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"rank {self.rank}: backend nccl needs CUDA, but this worker sees no GPU"
                )
            self.device = torch.device(
                "cuda", 0
            )  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
            torch.cuda.set_device(self.device)
            free_bytes, total_bytes = torch.cuda.mem_get_info()
            name = torch.cuda.get_device_name(self.device)
        else:
            self.device = torch.device("cpu")
            pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            free_bytes, total_bytes = (
                pages // self.world,
                os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
            )
            name = "cpu"
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = self.device
        dist.init_process_group(
            backend,
            init_method=f"tcp://{master}:{port}",
            rank=self.rank,
            world_size=self.world,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
        self.group = dist.group.WORLD
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "device": name,
            "free_bytes": int(free_bytes),
            "total_bytes": int(total_bytes),
            "threads": torch.get_num_threads(),
            # ranks with the same host id share one monotonic clock (phase spans across ranks)
            "host_id": _host_id(),
        }

    def load(
        self,
        layers: list[list[RankLayer]],
        stage2: list[bool],
        experts: np.ndarray,
        hidden: int,
        inter: int,
        dtype: str,
        seed: int,
    ) -> int:
        """Take this rank's instructions and build its experts' weights; ``experts[layers, spg]`` are
        the logical experts of its slots. Returns the weight bytes held."""
        import torch

        from moe_placement.executor.kernels import DeviceLayer, expert_weights

        self.dtype = getattr(torch, dtype)
        self.seed = seed
        try:
            self.layers = [
                [DeviceLayer.from_info(i, self.dtype, self.device) for i in lay] for lay in layers
            ]
            self.stage2 = list(stage2)
            self.experts = [
                [
                    expert_weights(seed, layer, int(e), hidden, inter, self.dtype, self.device)
                    for e in row
                ]
                for layer, row in enumerate(experts)
            ]
        except Exception as exc:
            if _is_oom(exc):
                raise RuntimeError(
                    f"{OOM_TAG}: rank {self.rank} loading expert weights: {exc}"
                ) from None
            raise
        self.hidden = hidden
        return int(
            sum(t.numel() * t.element_size() for row in self.experts for w in row for t in w)
        )

    # ---- replay ------------------------------------------------------------------------------------

    def _fault(self, fault: dict[str, Any] | None, layer: int) -> None:
        """Test hook: make this rank fail for real (killed, hung, or an allocation the host refuses)."""
        if (
            not fault
            or int(fault.get("rank", -1)) != self.rank
            or int(fault.get("layer", 0)) != layer
        ):
            return
        kind = fault.get("kind")
        if kind == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "hang":
            time.sleep(3600)
        elif kind == "oom":
            import torch

            torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the allocator refuses it

    def replay(
        self,
        warmup: int,
        reps: int,
        overlap: bool,
        fault: dict[str, Any] | None = None,
        return_outputs: bool = False,
    ) -> dict[str, Any]:
        """Run every layer ``warmup + reps`` times phase by phase (and pipelined when ``overlap``).

        Returns ``stamps_us[reps, layers, 4, 2]``: (start, end) clock readings of notify, dispatch,
        compute and combine; ``overlap_us[reps, layers]`` and, when asked, the first repetition's inputs
        and outputs per layer.
        """
        try:
            return self._replay(warmup, reps, overlap, fault, return_outputs)
        except Exception as exc:
            if _is_oom(exc):
                raise RuntimeError(
                    f"{OOM_TAG}: rank {self.rank}: {str(exc).splitlines()[0]}"
                ) from None
            raise

    def _replay(
        self,
        warmup: int,
        reps: int,
        overlap: bool,
        fault: dict[str, Any] | None,
        return_outputs: bool,
    ) -> dict[str, Any]:
        from moe_placement.executor.kernels import LayerRunner, token_activations

        runner = LayerRunner(self.group, self.device, self.dtype)
        L = len(self.layers)
        inputs = [
            token_activations(
                self.seed,
                layer,
                self.rank,
                self.layers[layer][0].info.n_home,
                self.hidden,
                self.dtype,
                self.device,
            )
            for layer in range(L)
        ]
        stamps = np.zeros((reps, L, 4, 2))
        over = np.zeros((reps, L))
        outputs: list[Any] = []
        for rep in range(warmup + reps):
            for layer in range(L):
                if rep == 0:
                    self._fault(fault, layer)
                lay = self.layers[layer]
                self.steps += 1
                out, phase_stamps = runner.run_phased(
                    lay[0], inputs[layer], self.experts[layer], self.stage2[layer]
                )
                if rep >= warmup:
                    stamps[rep - warmup, layer] = phase_stamps
                if rep == 0 and return_outputs:
                    outputs.append(
                        (
                            lay[0].info.home_tokens,
                            inputs[layer].float().cpu().numpy(),
                            out.float().cpu().numpy(),
                        )
                    )
        if overlap:
            for rep in range(warmup + reps):
                for layer in range(L):
                    lay = self.layers[layer]
                    self.steps += 1
                    xs = [inputs[layer][self._chunk_rows(lay, c)] for c in range(1, len(lay))]
                    _, us = runner.run_overlapped(
                        lay[1:], xs, self.experts[layer], self.stage2[layer]
                    )
                    if rep >= warmup:
                        over[rep - warmup, layer] = us
        return {
            "rank": self.rank,
            "stamps_us": stamps,
            "overlap_us": over if overlap else None,
            "outputs": outputs,
        }

    @staticmethod
    def _chunk_rows(lay: list[Any], chunk: int) -> slice:
        """Chunks cut each rank's home tokens into contiguous pieces, in order."""
        start = sum(lay[c].info.n_home for c in range(1, chunk))
        return slice(start, start + lay[chunk].info.n_home)

    # ---- calibration microbenchmarks ---------------------------------------------------------------

    def bench_all_to_all(
        self,
        rows_per_peer: list[Any],
        hidden: int,
        dtype: str,
        warmup: int,
        reps: int,
        notify: bool = True,
    ) -> np.ndarray:
        """All-to-alls moved exactly as the dispatch moves rows (gather the rows to send, exchange with
        explicit splits, concatenate after the home rows). Each point is an int (that many rows from
        every rank to every other, none to itself) or a ``[src][dst]`` matrix of rows. Returns this
        rank's (start, end) clock readings ``[points, reps, 2]`` in us, each started after a common
        barrier (:mod:`moe_placement.executor.timing` turns them into phase times)."""
        import torch

        from moe_placement.executor.kernels import LayerRunner, _a2a

        runner = LayerRunner(self.group, self.device, getattr(torch, dtype))
        G, r = self.world, self.rank
        out = np.zeros((len(rows_per_peer), reps, 2))
        data = []
        for point in rows_per_peer:
            if isinstance(point, (int, np.integer)):
                mat = np.full((G, G), int(point), dtype=np.int64)
                np.fill_diagonal(mat, 0)
            else:
                mat = np.asarray(point, dtype=np.int64)
            send, recv = [int(v) for v in mat[r]], [int(v) for v in mat[:, r]]
            n_home = max(sum(send), 1)
            x = torch.randn(n_home, hidden).to(self.device, runner.dtype)
            idx = torch.randperm(n_home, device=self.device)[: sum(send)]
            data.append((x, idx, send, recv))
        # Points in a fresh order every repetition (the same on every rank): a burst of load from
        # elsewhere, or a slow first exchange after a large one, then disturbs every point alike.
        for rep in range(warmup + reps):
            order = np.random.default_rng(rep).permutation(len(data))
            for i in order:
                x, idx, send, recv = data[i]
                if notify:  # as in a replay: the count exchange, then the timed exchange of rows
                    runner.barrier()
                    counts = torch.tensor(send, dtype=torch.long, device=self.device)
                    _a2a(torch.empty_like(counts), counts, [1] * G, [1] * G, self.group)
                runner.barrier()
                t0 = time.perf_counter()
                buf = torch.empty(sum(recv), hidden, dtype=x.dtype, device=x.device)
                _a2a(buf, x.index_select(0, idx), recv, send, self.group)
                torch.cat([x, buf])
                runner.sync()
                if rep >= warmup:
                    out[i, rep - warmup] = (t0 * 1e6, time.perf_counter() * 1e6)
        return out

    def bench_gemm(
        self,
        grid: list[tuple[int, int]],
        hidden: int,
        inter: int,
        dtype: str,
        warmup: int,
        reps: int,
    ) -> np.ndarray:
        """Expert SwiGLU compute with the replay's own kernel (gather rows of a working set, SwiGLU per
        local expert, gate-weighted scatter-add), all ranks at once (they share the host): ``grid`` of
        (experts, tokens per expert); (0, 0) leaves this rank idle. Returns this rank's (start, end)
        clock readings ``[points, reps, 2]`` in us, each started after a common barrier."""
        import torch

        from moe_placement.executor.kernels import (
            LayerRunner,
            expert_weights,
            synthetic_compute_layer,
        )

        runner = LayerRunner(self.group, self.device, getattr(torch, dtype))
        most = max((e for e, _ in grid), default=0)
        weights = [
            expert_weights(self.seed + 99, 0, e, hidden, inter, runner.dtype, self.device)
            for e in range(most)
        ]
        out = np.zeros((len(grid), reps, 2))
        data = []
        for i, (experts, tokens) in enumerate(grid):
            lay, n_work = synthetic_compute_layer(
                [tokens] * experts, 1000 * self.rank + i, runner.dtype, self.device
            )
            data.append((lay, torch.randn(n_work, hidden).to(self.device, runner.dtype)))
        for rep in range(warmup + reps):  # points interleaved, as for the all-to-all
            for i, (lay, w) in enumerate(data):
                runner.barrier()
                t0 = time.perf_counter()
                runner.compute(lay, w, weights)
                runner.sync()
                if rep >= warmup:
                    out[i, rep - warmup] = (t0 * 1e6, time.perf_counter() * 1e6)
        return out

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
