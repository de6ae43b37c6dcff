"""Step-level credit: steps, step scorers, and the methods that use them (PURE, CAPO, OPRL, InT, R³L).

Half of the credit-assignment literature assigns credit to *reasoning steps* rather than tokens. This
package holds their shared substrate, kept out of the trainer (which only wires two hooks):

- :mod:`crs.steps.segment` — completions → steps → token spans (PURE's separator rule);
- :mod:`crs.steps.scorers` — ``rule`` / ``prm`` / ``judge`` / ``implicit`` scorers behind one interface;
- :mod:`crs.steps.rule` — exact process verifiers of the synthetic tasks;
- :mod:`crs.steps.build` — a small PRM and a small judge built offline for the embedded task;
- :mod:`crs.steps.pure`, :mod:`crs.steps.capo`, :mod:`crs.steps.oprl` — the methods' math (pure tensor
  functions, golden-tested); :mod:`crs.steps.methods` registers them as credit steps;
- :mod:`crs.steps.intervention` — InT's intervention stage (a callback: SFT on prefix + fix, then RL);
- :mod:`crs.steps.retry` — R³L's reflect-then-retry rollouts (first attempts, pivot, retries);
- :mod:`crs.steps.hook` — the rollout-time hook; :mod:`crs.steps.localization` — where credit lands.

Example::

    crs train method=pure                                   # PURE with the exact rule verifier
    crs train method=pure method.steps.scorer=prm           # ... with the built PRM
    crs train method=capo                                   # CAPO with the built judge
    crs train method=oprl                                   # OPRL's online implicit PRM
    crs train benchmark=bifurcation method=pure diagnostics.every=1   # where does credit land?
"""
