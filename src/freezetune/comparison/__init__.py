"""compare and report: strategies parsed once (strategies.py) and checked before anything trains
(preflight.py); the base reference, the rate search and the seeds in worker processes (reference.py,
rate_search.py, runner.py, worker.py); their forgetting; and the verdict: pairs tested and dominance
(pairs.py), the frontier (verdict.py), in words (wording.py), in the report (report.py)."""
