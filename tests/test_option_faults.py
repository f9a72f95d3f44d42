"""The fault suite's option table: values a command cannot take, and options it would not read
(of a mode the run is not in, beside the option that decides, for output that is not printed).
The same rules as tests/test_faults.py: exit 2, one error line, last, and nothing the user had changed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_faults import Case, check_fault, train, write

CASES = [
    # numbers a run cannot take: nan, inf, beyond float32, a digit int() reads but the schedule's grammar does not
    Case("--lr nan", train("--lr", "nan"), "--lr must be a finite number"),
    Case("--lr inf", train("--lr", "inf"), "--lr must be a finite number"),
    Case("--lr beyond float32", train("--lr", "1e39"), "--lr 1e+39 is beyond"),
    Case("a non-ASCII digit in a schedule", train("--schedule", "gradual every=²"), "every"),
    Case("--max-grad-norm nan", train("--max-grad-norm", "nan"), "--max-grad-norm must be a finite number"),
    Case("lr: .nan in a config file", ["train", "--config", "{w}/run.yaml"], "run.yaml line 2: 'lr' must be a finite number",
         write("run.yaml", "max_steps: 2\nlr: .nan\n")),
    Case("compare --lr-plan nan", ["compare", "--lr-plan", "nan", "--out", "{w}/cmp"], "--lr-plan must be a finite number"),
    # options for a part of the preview that is not printed
    Case("evaluate --limit -1", ["evaluate", "{w}/model", "--tasks", "builtin", "--limit", "-1"],
         "--limit must be 0 (every item) or more, got -1"),
    Case("evaluate --batch-size 0", ["evaluate", "{w}/model", "--tasks", "builtin", "--batch-size", "0"],
         "--batch-size must be at least 1, got 0"),
    Case("plan --seed without --schedule", ["plan", "{w}/model", "freeze bottom 50%", "--seed", "3"],
         "--seed is for --schedule's phases, and none is given"),
    Case("plan --format with --json", ["plan", "{w}/model", "freeze bottom 50%", "--format", "axolotl", "--json"],
         "--json is for the preview, and --format axolotl prints the trainable set in that tool's config instead"),
    # peft's adapters are fp32 whatever --dtype says: the option would change nothing
    Case("export --format peft --dtype", ["export", "{w}/run", "--out", "{w}/adapter", "--format", "peft", "--dtype", "float16"],
         "--dtype float16 sets the merged model folder's weights, and --format peft writes the adapters alone"),
    Case("--seq-len 1", train("--seq-len", "1"), "--seq-len must be at least 2"),
    Case("--max-grad-norm -1", train("--max-grad-norm", "-1"), "--max-grad-norm must be 0 or more, got -1.0"),
    Case("--weight-decay -0.1", train("--weight-decay", "-0.1"), "--weight-decay must be 0 or more, got -0.1"),
    Case("--lora-alpha 0", train("--lora-r", "4", "--lora-alpha", "0"), "--lora-alpha must be positive, got 0"),
    # a step of more batches than the data holds repeats examples; --grad-accum 1e11 grew to 17 GiB and never ended its step
    Case("--grad-accum past the data", train("--grad-accum", "6"),
         "--grad-accum 6: one optimizer step takes 6 batches, and 20 training examples make 5 of 4, so a step would see "
         "an example twice; give --grad-accum 5 or less"),
    # compare's runs each failed on it, after the base was evaluated
    Case("compare --batch-size past the data", ["compare", "--model", "{w}/model", "--data", "{w}/train.jsonl", "--batch-size", "64",
                                                "--strategy", "full", "--lr-full", "1e-3", "--out", "{w}/cmp"],
         "error: 19 training examples are fewer than one batch (--batch-size 64)"),
    # without a validation split a search run scores the eval split: the rate was chosen on the items that judge it
    Case("compare --validation 0 with a searched rate", ["compare", "--model", "{w}/model", "--data", "{w}/train.jsonl",
                                                         "--strategy", "full", "--strategy", "freeze bottom 50%",
                                                         "--lr-full", "1e-3", "--validation", "0", "--out", "{w}/cmp"],
         "--validation 0 would choose the rate of freeze bottom 50% on the reported eval split, which then judges it; "
         "give --validation N (default 64), or --lr-plan"),
    # seeds numpy cannot take: a ValueError traceback at the run's start, or every compare run failed on it
    Case("--seed -1", train("--seed", "-1"), "--seed must be between 0 and 4294967295, got -1"),
    Case("generate --seed 2**70", ["generate", "{w}/run", "--prompt", "a", "--temperature", "1", "--seed", str(2**70)],
         "--seed must be between 0 and 4294967295"),
    Case("compare --seed -3", ["compare", "--model", "{w}/model", "--seed", "-3", "--out", "{w}/cmp"], "--seed must be between 0"),
    Case("compare seeds past the largest", ["compare", "--model", "{w}/model", "--seed", "4294967295", "--seeds", "2", "--out", "{w}/cmp"],
         "--seed 4294967295 with --seeds 2 runs seeds past the largest, 4294967295"),
    Case("plan --seed -1", ["plan", "{w}/model", "train all", "--schedule", "lisa layers=1 every=1", "--max-steps", "2", "--seed", "-1"],
         "--seed must be between 0"),
    Case("--max-new-tokens 0", train("--eval-generate", "2", "--max-new-tokens", "0"),
         "--max-new-tokens must be at least 1, got 0"),
    Case("--lora-targets without --lora-r", train("--lora-targets", "q_proj"), "--lora-targets is for LoRA: give --lora-r N"),
    # peft refuses a list only when no name matches: 'bogus' was dropped without a word
    Case("--lora-targets naming no module", train("--lora-r", "4", "--lora-targets", "q_proj,bogus"),
         "--lora-targets q_proj,bogus: 'bogus' names no module of the model; its linear layers are down_proj, gate_proj"),
    Case("compare lora targets naming no module",
         ["compare", "--model", "{w}/model", "--strategy", "lora targets=q_proj,bogus", "--out", "{w}/cmp"],
         "--strategy 'lora targets=q_proj,bogus': --lora-targets q_proj,bogus: 'bogus' names no module of the model"),
    Case("--beta without dpo", train("--beta", "0.5"), "--beta is for --objective dpo, which has a reference model"),
    # typed, an option is asked for even at its default value; beside the option that decides, it does nothing
    Case("--beta at its default without dpo", train("--beta", "0.1"), "--beta is for --objective dpo"),
    Case("--epochs beside --max-steps", train("--epochs", "2"),
         "--epochs 2 has no effect: --max-steps 2 sets the run's length; give one of the two"),
    Case("--warmup-ratio beside --warmup", train("--warmup", "1", "--warmup-ratio", "0.1"),
         "--warmup-ratio 0.1 has no effect: --warmup 1 sets the warmup; give one of the two"),
    # generation options where nothing is generated: the answers asked for never come
    Case("--show-generations with --eval-generate 0", train("--show-generations", "2"),
         "--show-generations is for generated answers, and --eval-generate 0 generates none"),
    Case("--max-new-tokens with --eval-generate 0", train("--max-new-tokens", "20"),
         "--max-new-tokens is for generated answers, and --eval-generate 0 generates none"),
    Case("--eval-generate with cpt", train("--objective", "cpt", "--eval-generate", "5"),
         "--eval-generate is for generated answers, and --objective cpt generates none"),
    Case("--epochs beside max_steps in the config file", ["train", "--config", "{w}/both.yaml", "--out", "{w}/new"],
         "--epochs 1 has no effect: --max-steps 2 sets the run's length", write("both.yaml", "max_steps: 2\nepochs: 1\n")),
    Case("--cache-ram with the cache off", train("--prefix-cache", "off", "--cache-ram", "1GiB"),
         "--cache-ram is for the prefix cache, which --prefix-cache off turns off"),
    # a memory cache is unbounded and never in the folder: neither size was read
    Case("--cache-limit with a memory cache", train("--prefix-cache", "memory", "--cache-limit", "1GiB"),
         "--cache-limit is for a cache that may go to disk (--prefix-cache auto or disk); --prefix-cache memory keeps"),
    Case("--cache-ram with a memory cache", train("--prefix-cache", "memory", "--cache-ram", "1GiB"),
         "--cache-ram is for a cache that may go to disk"),
    # every trained tensor at one depth takes one rate: a decay over them changes nothing
    Case("--layer-lr-decay over one block", train("--plan", "train top 1", "--layer-lr-decay", "0.8"),
         "--layer-lr-decay 0.8 has nothing to vary: every tensor the plan trains sits at one depth"),
    # the runner checkpoints the blocks the backward pass runs through: here none
    Case("--gradient-checkpointing with no block trained", train("--plan", "train norm", "--gradient-checkpointing"),
         "--gradient-checkpointing recomputes the blocks the backward pass runs through, and this plan trains no block"),
    # a folder that is no run, holding a file of the name a run writes: it was written over
    Case("--out holding a file the run would write", train("--out", "{w}/mine"),
         "mine holds eval.json, which the run would write over", write("mine/eval.json", '{"mine": 1}')),
    Case("--eval-data with --validation", train("--validation", "4"),
         "--eval-data and --validation 4 both choose what the run is scored on"),
    # an empty value (an unset shell variable) is no request for the default: --data '' trained on the built-in
    # task, --out '' wrote into the current folder, --plan '' trained 'freeze bottom 75%'
    Case("--data ''", train("--data", ""), "--data is empty: give a value, or drop the flag for its default"),
    Case("--out ''", train("--out", " "), "--out is empty: give a value, or drop the flag for its default"),
    Case("--plan '' in a config file", ["train", "--config", "{w}/plan.yaml"], "--plan is empty", write("plan.yaml", "plan: ''\n")),
    # "does not exist" misled: it is there, and a folder
    Case("--config a folder", ["train", "--config", "{w}"], "is a folder, not a file"),
    Case("--plan a folder.yaml", ["plan", "{w}/model", "{w}/model.yaml"], "model.yaml is a folder, not a file",
         lambda w: (w / "model.yaml").mkdir()),
    Case("compare --strategy ''", ["compare", "--model", "{w}/model", "--strategy", "full", "--strategy", ""], "--strategy is empty"),
    Case("plan ''", ["plan", "", "train top 1"], "MODEL is empty: give a value"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_option_fault(case: Case, world: Path, capsys, monkeypatch):
    check_fault(case, world, capsys, monkeypatch)


def test_the_library_refuses_an_empty_value_as_the_cli_does():
    from freezetune.config.run import TrainConfig
    from freezetune.errors import FreezetuneError

    with pytest.raises(FreezetuneError, match=r"^--data is empty: give a value, or drop the flag for its default$"):
        TrainConfig(data="").validate()  # data=os.environ.get("DATA", "") in a script


@pytest.mark.parametrize("values, said", [
    ({"objective": "rl"}, "--objective must be one of sft, cpt, dpo, got 'rl'"),  # was a KeyError deep in the session
    ({"zero_stage": 5}, "--zero-stage must be one of 0, 1, 2, 3, got 5"),
    ({"lr": float("nan")}, "--lr must be a finite number, got nan"),  # trained on nonsense
])
def test_the_library_refuses_what_argparse_would_have(values, said):
    from freezetune.config.run import TrainConfig
    from freezetune.errors import FreezetuneError

    with pytest.raises(FreezetuneError, match=f"^{re.escape(said)}$"):
        TrainConfig(**values).validate()
    TrainConfig(log_with=None).validate()  # an optional left unset is no choice to check
