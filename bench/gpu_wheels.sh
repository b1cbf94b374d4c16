#!/usr/bin/env bash
# Wheels that bench/gpu_klein.py needs on the GPU machine and its image lacks (it has torch,
# transformers, accelerate, huggingface_hub, numpy, pillow, tokenizers; Python 3.12).
# Run here, in the repository root; carry .whl (ignored by git) to the device.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
py=${PYTHON:-python3}
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl \
    diffusers==0.42.1 typing-extensions==4.16.0 pydantic==2.14.4 pydantic-core==2.50.5 \
    pydantic-settings==2.16.3 python-dotenv typing-inspection annotated-types fpng torchao
du -sh .whl && ls .whl
