"""Run under torchrun by test_distributed.py: the cross-process plan check, with plans that differ on rank 1
when the first argument is 'differ'."""

import sys

import torch
from accelerate import Accelerator

from freezetune.distributed.processes import check_same_plan
from freezetune.errors import FreezetuneError

accelerator = Accelerator(cpu=True)
names = ["model.layers.3.mlp.up_proj.weight"]
if sys.argv[1] == "differ" and accelerator.process_index == 1:
    names.append("model.norm.weight")
try:
    check_same_plan(accelerator, names)
    verdict = "same"
except FreezetuneError as exc:
    verdict = f"error: {exc}"
sys.stdout.write(f"rank {accelerator.process_index}: {verdict}\n")  # one write: the two processes share the pipe
sys.stdout.flush()
torch.distributed.destroy_process_group()
