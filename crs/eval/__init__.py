"""``crs eval``: score any model on the paper's benchmarks — avg@k, unbiased pass@k, greedy accuracy.

The headline paper (TP-Schedule, arXiv 2605.25381) reports avg@k on AIME24/25, AMC23, MATH-500,
Minerva, OlympiadBench and GPQA-Diamond; ``crs eval`` gives the same numbers for a model folder, a run's
final model or checkpoint (MLflow run id), every final model of a sweep (sweep id), or a LoRA adapter:

    crs eval                                            # the embedded model on its own task
    crs eval source=/models/Qwen3-4B suite=paper        # the paper's suite (hub, or suite.data_dir)
    crs eval source=3fa2c1d0 benchmark=math500 eval.n=16 eval.k=[1,8,16]   # a sweep's final models
    crs compare --sweep 3fa2c1d0 --benchmarks avg@16    # methods × benchmarks, intervals over seeds

The package reads in parts, each on its own:

- :mod:`~crs.eval.settings` — the config schemas (``eval.*``, ``suite.*``), no heavy imports;
- :mod:`~crs.eval.sources` — ``source=`` → the models to score (folder | run | sweep | adapter);
- :mod:`~crs.eval.problems` — a benchmark config → prompts, references and a grader;
- :mod:`~crs.eval.graders` — math-verify for math, the exact choice letter for GPQA, extraction first;
- :mod:`~crs.eval.sampling` — batched generation (n samples at a temperature, plus greedy);
- :mod:`~crs.eval.metrics` — avg@k, unbiased pass@k, greedy accuracy, extraction failures, intervals;
- :mod:`~crs.eval.cache` — results cached per (model hash, benchmark, sampling config);
- :mod:`~crs.eval.report` — the table and the MLflow logging (``eval/<benchmark>/<metric>``);
- :mod:`~crs.eval.main` — the ``@hydra.main`` entry that runs them in order.
"""
