#!/usr/bin/env bash
# The wheels a lent GPU box (no package index; docs/gpu.md) needs beyond its own image, into .whl/ (ignored):
# the versions the device README names as working with its torch 2.11 / huggingface_hub 1.33 (transformers
# 5.24.0, not a 5.25+ that wants huggingface_hub 2.x), TRL at the pinned minor, and jsonschema for the
# orchestration traces. scripts/gpu_check.sh installs them into /tmp/site there. 17 files, ~16 MB.
#
#   bash scripts/gpu_wheels.sh          # here, where pip reaches PyPI; then carry .whl (and .cache/gpu-models)
set -eu
DEST=${1:-.whl}
rm -rf "$DEST"; mkdir -p "$DEST"
PY=${PY:-python3}
WHEELS=(
  trl==1.16.0 transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  hydra-core==1.3.8 omegaconf==2.3.1 hydra-submitit-launcher==1.2.0 hydra-joblib-launcher==1.2.0 submitit==1.5.4
  math-verify==0.9.0 latex2sympy2_extended==1.11.0
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
)
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d "$DEST" "${WHEELS[@]}"
$PY -m pip download -q --no-deps --no-binary=:all: -d "$DEST" antlr4-python3-runtime==4.9.3   # sdist only
ls "$DEST" | wc -l; du -sh "$DEST"
