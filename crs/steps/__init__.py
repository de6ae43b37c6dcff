"""Step-level substrate: completions cut into reasoning steps, and the scorers that judge each step.

Half of the credit-assignment literature assigns credit to *reasoning steps* rather than tokens. This
package is the library those methods (PURE, CAPO, OPRL, InT, R³L in :mod:`crs.methods`) call; it names
none of them:

- :mod:`crs.steps.segment` — completions → steps → token spans (PURE's separator rule);
- :mod:`crs.steps.scorers` — ``rule`` / ``prm`` / ``judge`` / ``implicit`` scorers behind one interface
  (and the judge's vote over critiques);
- :mod:`crs.steps.implicit` — the implicit PRM learned online (OPRL / iStar's scorer);
- :mod:`crs.steps.rule` — exact process verifiers of the synthetic tasks;
- :mod:`crs.steps.build` — a small PRM and a small judge built offline for the embedded task;
- :mod:`crs.steps.settings` — ``method.steps`` (segmentation and scorer settings, help texts);
- :mod:`crs.steps.mixing` — the GRPO/step-advantage mix the step methods share;
- :mod:`crs.steps.hook` — the rollout-time hook (runs each method's ``produce``);
  :mod:`crs.steps.localization` — where credit lands.

Example::

    crs train method=pure                                   # PURE with the exact rule verifier
    crs train method=pure method.steps.scorer=prm           # ... with the built PRM
    crs train method=capo                                   # CAPO with the built judge
    crs train method=oprl                                   # OPRL's online implicit PRM
    crs train benchmark=bifurcation method=pure diagnostics.every=1   # where does credit land?
"""
