"""Mutation testing of crs's math modules: mutmut 3 against each module's fast tests, one kill rate each.

A mutant is the module with one small change (``<`` for ``<=``, ``1`` for ``0``, a dropped argument);
the tests *kill* it when one of them fails. A mutant that survives is either a gap in the tests or an
*equivalent* mutant (a change no input can see); docs/mutation.md lists each survivor and which it is.
Not in CI (minutes per module on two cores)::

    make mutation                                   # every module of .mutation/modules.toml
    make mutation MODULE=crs/methods/gigpo.py       # one module
    python scripts/mutation.py --module crs/schedules.py --markdown table.md

How: the checkout's files (tracked + untracked, not ignored) are copied into a scratch folder per
module (``--workdir``, default ``$TMPDIR/crs-mutation``), so the checkout is never mutated in place;
a ``setup.cfg`` ``[mutmut]`` section written there names the module (``only_mutate``) and its tests
(``pytest_add_cli_args_test_selection``); ``mutmut run --max-children 1`` mutates, records which tests
call which function, and runs each mutant against the tests that call its function. The results
(``mutants/<path>.meta``) give the per-module table; survivors are printed with their diffs. A module
whose kill rate is under ``--threshold`` (90 %) makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".mutation" / "modules.toml"
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
# mutmut 3's exit codes (mutmut.stats.status_by_exit_code), kept here to read .meta without importing it
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS.update({35: "suspicious", 36: "timeout", 37: "caught by type check", -9: "segfault", -11: "segfault"})
STATUS.update({k: "timeout" for k in (-24, 24, 152, 255)})


def load_config(path: Path = CONFIG) -> dict:
    return tomllib.loads(path.read_text())


def module_prefix(path: str) -> str:
    """``crs/methods/r3l/__init__.py`` -> ``crs.methods.r3l.`` (how mutmut 3 names that file's mutants)."""
    dotted = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    return dotted + "."


def copy_checkout(dest: Path) -> None:
    """The working tree's files as ``git ls-files`` sees them (tracked + untracked, not ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    if dest.exists():
        shutil.rmtree(dest)
    for raw in filter(None, files):
        src = ROOT / raw.decode()
        if src.is_file():
            (dest / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / raw.decode())


def write_setup_cfg(work: Path, module: dict, defaults: dict) -> list[str]:
    """The [mutmut] section for one module; returns the test selection actually used."""
    tests = [t for t in module["tests"] if (work / t.split("::")[0]).exists()]
    missing = sorted(set(module["tests"]) - set(tests))
    if missing:
        print(f"  (skipping missing tests: {', '.join(missing)})")
    lines = ["[mutmut]", "source_paths = crs", f"only_mutate = {module['path']}"]
    lines.append("also_copy =\n" + "".join(f"    {p}\n" for p in defaults.get("also_copy", [])).rstrip())
    lines.append("pytest_add_cli_args =\n" + "".join(f"    {a}\n" for a in defaults["pytest_args"]).rstrip())
    lines.append("pytest_add_cli_args_test_selection =\n" + "".join(f"    {t}\n" for t in tests).rstrip())
    lines.append("use_git_change_detection = false")
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")
    return tests


def read_results(work: Path, module: dict) -> dict[str, str]:
    """mutant name -> status, for this module's mutants (restricted to ``functions`` globs if given)."""
    meta = work / "mutants" / (module["path"] + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    prefix = module_prefix(module["path"])
    globs = [prefix + g for g in module.get("functions", [])]
    out = {}
    for name, code in codes.items():
        if globs and not any(fnmatch(name, g) for g in globs):
            continue
        out[name] = "not checked" if code is None else STATUS.get(code, "suspicious")
    return out


def show(work: Path, name: str, env: dict) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=work, env=env, capture_output=True, text=True
    )
    diff = [
        ln for ln in r.stdout.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))
    ]
    return "\n".join("      " + ln for ln in diff)


def run_module(module: dict, defaults: dict, base: Path, env: dict) -> dict:
    work = base / module["path"].replace("/", "__").removesuffix(".py")
    print(f"== {module['path']}", flush=True)
    copy_checkout(work)
    tests = write_setup_cfg(work, module, defaults)
    args = [sys.executable, "-m", "mutmut", "run", "--max-children", "1"]
    args += [module_prefix(module["path"]) + g for g in module.get("functions", [])]
    start = time.monotonic()
    with open(work / "mutmut.log", "w") as log:
        rc = subprocess.run(args, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    results = read_results(work, module)
    if rc != 0 or not results:
        tail = (work / "mutmut.log").read_text(errors="replace").replace("\r", "\n").splitlines()[-15:]
        print(f"  mutmut exited {rc}; last lines of {work / 'mutmut.log'}:\n    " + "\n    ".join(tail))
    counts = Counter(results.values())
    killed = sum(counts[s] for s in KILLED)
    total = len(results) - counts["skipped"]
    survivors = sorted(n for n, s in results.items() if s not in KILLED | {"skipped"})
    row = {
        "module": module["path"]
        + (" (" + ", ".join(module["functions"]) + ")" if module.get("functions") else ""),
        "mutants": total,
        "killed": killed,
        "survived": total - killed,
        "rate": killed / total if total else 0.0,
        "seconds": round(seconds),
        "tests": tests,
        "survivors": {n: results[n] for n in survivors},
    }
    print(f"  {killed}/{total} killed ({100 * row['rate']:.1f} %) in {seconds:.0f} s", flush=True)
    for name in survivors:
        print(f"  survivor [{results[name]}] {name}\n{show(work, name, env)}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    out = ["| module | mutants | killed | survived | kill rate | seconds |", "|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        out.append(
            f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['survived']} | "
            f"{100 * r['rate']:.1f} % | {r['seconds']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--module", action="append", help="a path of .mutation/modules.toml (repeatable; default: all)"
    )
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "crs-mutation")
    ap.add_argument("--threshold", type=float, default=0.9, help="minimum kill rate per module (default 0.9)")
    ap.add_argument("--json", type=Path, help="also write the rows (with survivors) to this file")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    a = ap.parse_args(argv)
    cfg = load_config()
    modules = cfg["module"]
    if a.module:
        known = {m["path"]: m for m in modules}
        unknown = [p for p in a.module if p not in known]
        if unknown:
            ap.error(f"not in {CONFIG.relative_to(ROOT)}: {', '.join(unknown)} (known: {', '.join(known)})")
        modules = [known[p] for p in a.module]
    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
    )
    env.setdefault("CRS_CACHE_DIR", str(ROOT / ".cache" / "test-models"))  # tiny models: build once, share
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    rows = [run_module(m, cfg["defaults"], a.workdir, env) for m in modules]
    stamp = (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit.stdout.strip()} (+ working tree)"
    )
    md = table(rows)
    print(f"\nmutmut 3 kill rates, {stamp}\n\n{md}")
    if a.markdown:
        a.markdown.write_text(md + "\n")
    if a.json:
        a.json.write_text(json.dumps({"when": stamp, "rows": rows}, indent=1) + "\n")
    low = [r["module"] for r in rows if r["rate"] < a.threshold]
    if low:
        print(f"\nunder {100 * a.threshold:.0f} %: {', '.join(low)}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
