"""One rank of a multi-rank job, for tests/test_ranks.py (not collected: no test_ prefix).

    torchrun ... ranks_worker.py ddp BASE STEPS     a tiny model trained with DDP (gloo, CPU)
    ranks_worker.py plain BASE STEPS ROLE           ranks set up by the test (SLURM variables):
        ROLE "finish": log STEPS steps, print "logged", close after a line on stdin;
        ROLE "die": log forever, printing each flushed step, until the test kills it
"""

from __future__ import annotations

import sys
import time


def ddp(base: str, steps: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import expman

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)                       # same initial weights in every rank
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net = DistributedDataParallel(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)   # each rank its own shard
    x = torch.randn(64, 4, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [3.0], [0.5]])
    with expman.Experiment("ddp", base_dir=base, capture_env=False, system_metrics=False) as exp:
        exp.log_params({"lr": 0.05, "world_size": world, "set_by_rank": rank})
        exp.info(f"rank {rank} of {world} starts")
        for step in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()                    # gradients all-reduced across ranks
            opt.step()
            exp.log_metrics({"loss": loss.detach()}, step=step)   # a 0-d tensor
        # DDP keeps the replicas identical: every rank logs the same weight checksum
        exp.log_metrics({"weight_sum": sum(float(p.sum()) for p in model.parameters())},
                        step=steps)
    dist.destroy_process_group()


def plain(base: str, steps: int, role: str) -> None:
    import expman

    with expman.Experiment("job", base_dir=base, capture_env=False, system_metrics=False,
                           flush_interval=0.01) as exp:
        if role == "die":
            step = 0
            while True:
                exp.log_metrics({"x": float(step), "rank": float(exp.rank)}, step=step)
                if step % 10 == 9:
                    exp.flush()
                    print(step, flush=True)    # everything up to here is in the OS
                    time.sleep(0.005)
                step += 1
        for step in range(steps):
            exp.log_metrics({"x": float(step), "rank": float(exp.rank)}, step=step)
        exp.flush()
        print("logged", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    if sys.argv[1] == "ddp":
        ddp(sys.argv[2], int(sys.argv[3]))
    else:
        plain(sys.argv[2], int(sys.argv[3]), sys.argv[4])
