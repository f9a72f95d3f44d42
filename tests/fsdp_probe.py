"""Run under torchrun by test_fsdp.py: one FSDP step of a tiny Llama, reporting what each process holds."""

import json
import sys

import torch
import torch.distributed as dist

from freezetune.distributed.sharding import FsdpSettings, local, shard_model
from freezetune.plans.anatomy import find_anatomy
from freezetune.plans.language import FreezePlan
from freezetune.plans.resolution import apply_plan, resolve
from freezetune.training.optimizer import build_optimizer

from conftest import build_tiny

dist.init_process_group("gloo")
model = build_tiny("llama").train()
resolved = resolve(FreezePlan.parse("freeze bottom 75%"), find_anatomy(model))
apply_plan(model, resolved)
shard_model(model, resolved, FsdpSettings(), torch.device("cpu"), bf16=False)
optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(dist.get_rank()))
model(input_ids=ids, labels=ids).loss.backward()
optimizer.step()
params = dict(model.named_parameters())
trainable = {n for n, p in params.items() if p.requires_grad}
state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
report = json.dumps({
    "rank": dist.get_rank(),
    "frozen_with_grad": sorted(n for n, p in params.items() if n not in trainable and p.grad is not None),
    "trainable_numel": sum(params[n].numel() for n in trainable),
    "local_grad_numel": sum(local(params[n].grad).numel() for n in trainable),
    "optimizer_state_numel": sum(local(v).numel() for v in state),
    "local_param_numel": sum(local(p).numel() for p in params.values()),
    "total_numel": sum(p.numel() for p in params.values()),
})
sys.stdout.write(report + "\n")  # one write: the two processes share the pipe
sys.stdout.flush()
dist.destroy_process_group()
