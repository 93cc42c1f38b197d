"""One rank of the 2-process DDP test; run under torchrun:

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_driver.py OUT

For each translator, on tiny volumes: trains 2 steps and stops (latest.pt), resumes to the
end (4 steps), then trains the same 4 steps uninterrupted in another folder. After every
step the rank records all its parameters (flattened) and the sum of the slices it trained
on; ``OUT/{translator}_rank{r}.pt`` holds those records and the networks after each run.
``OUT/averager_rank{r}.pt`` holds the step an SGD optimiser took when rank r's gradient was r + 1.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest

from conftest import make_image  # noqa: E402
from vstk.plugins import load_plugins  # noqa: E402
from vstk.translation.data import SliceSet  # noqa: E402
from vstk.translation.distributed import DistContext, GradientAverager  # noqa: E402
from vstk.translation.trainer import seed_everything, train  # noqa: E402

TINY = dict(size=32, crop=None, spacing="0.8,0.8", centre="head", steps=2, decay_steps=2, ngf=4, n_blocks=1,
            ndf=4, checkpoint_every=1, sample_every=0, cpu_precision="fp32")


def flat_parameters(model) -> torch.Tensor:
    nets = model.networks()
    return torch.cat([p.detach().reshape(-1).cpu() for name in sorted(nets) for p in nets[name].parameters()])


def states(model) -> dict:
    return {name: {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            for name, net in model.networks().items()}


def run(translator, source: SliceSet, target: SliceSet, workdir: Path, context: DistContext,
        stop_after: int | None, record: dict) -> None:
    """The shared training loop, with each step's outcome recorded (the loop itself unchanged)."""
    schedule = translator.config.schedule(max(len(source), len(target)))
    seed_everything(schedule.seed)
    model = translator.build_model()
    step = model.train_step

    def recorded_step(real_a, real_b):
        losses = step(real_a, real_b)
        record["params"].append(flat_parameters(model))
        record["batches"].append(float(real_a.sum() + real_b.sum()))
        return losses

    model.train_step = recorded_step
    train(model, source, target, workdir, schedule, device="cpu", meta=translator.metadata(),
          stop_after=stop_after, distributed=context)
    record["states"].append(states(model))


def averaged_gradient(context: DistContext) -> torch.Tensor:
    """The gradient an optimiser steps with when rank r's own gradient is all r + 1."""
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    averager = GradientAverager({"sgd": optimizer}, context.world_size)
    with torch.no_grad():
        for param in layer.parameters():
            param.zero_()  # so the parameters after one step are exactly minus the gradient used
            param.grad = torch.full_like(param, float(context.rank + 1))
    optimizer.step()
    averager.remove()
    return -torch.cat([p.detach().reshape(-1) for p in layer.parameters()])


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    context = DistContext.from_env(os.environ)
    assert context.world_size == 2, context
    # One process group for the three runs (train() uses an open group as it is).
    torch.distributed.init_process_group("gloo")
    host = load_plugins()
    source_volumes = [make_image(shape=(6, 40, 40), seed=i) for i in range(2)]
    target_volumes = [make_image(shape=(6, 40, 40), spacing=(0.6, 0.6, 1.0), seed=10 + i) for i in range(2)]
    torch.save({"averaged": averaged_gradient(context)}, out / f"averager_rank{context.rank}.pt")
    for name in ("cyclegan", "qsattn"):
        cls = host.get("translator", name)
        settings = dict(TINY, **({"num_patches": 16, "netf_nc": 8} if name == "qsattn" else {}))
        translator = cls(cls.profile("cpu", **settings), device="cpu")
        options = translator.config.slice_options()
        source = SliceSet.from_volumes(source_volumes, options)
        target = SliceSet.from_volumes(target_volumes, options)
        record: dict = {"params": [], "batches": [], "states": []}
        run(translator, source, target, out / name / "resumed", context, 2, record)
        if context.is_main:
            shutil.copy(out / name / "resumed" / "latest.pt", out / name / "latest_step2.pt")
        run(translator, source, target, out / name / "resumed", context, None, record)
        straight: dict = {"params": [], "batches": [], "states": []}
        run(translator, source, target, out / name / "straight", context, None, straight)
        record["straight_params"] = straight["params"]
        torch.save(record, out / f"{name}_rank{context.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
