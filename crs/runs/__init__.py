"""Runs you can trust: what keeps a ``crs train`` job honest when things go wrong.

One module per concern, each wired into :func:`crs.train.train` with a few lines:

``checkpoint``
    Checkpoints every ``runs.checkpoint_every`` steps through HF ``Trainer`` (model, optimizer,
    scheduler, RNG, data position), published atomically by a marker file written last, the last
    ``runs.keep`` kept; ``resume=auto|never|<path>`` finds the unfinished run with the same config and
    continues it — the same MLflow run id, every metric step logged exactly once, the same ρ.
``liveness``
    A heartbeat (pid, host, time) and a lock held for the job's life, so a run whose process died
    (``kill -9``, node loss) is told apart from a live one: ``crs compare`` marks it, ``crs runs clean``
    closes it as KILLED.
``guard``
    Non-finite loss, gradients, advantages, logits or parameters stop the run at that step (FAILED,
    quantity and step named); a collapsed policy (entropy at its maximum, reward 0) warns.
``lock``
    A file lock around the first use of a sqlite store (MLflow's migration must not race).
``redact``
    User-info in URIs and key/token/password-like values never reach params, tags, artifacts or the
    console.
``preflight``
    Resources checked before anything loads: model paths, data files, the tracking store.

    crs train trainer.max_steps=300 runs.checkpoint_every=50    # kill it any time, then rerun: it resumes
    crs runs clean                                              # close runs whose process died
"""
