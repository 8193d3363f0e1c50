#!/usr/bin/env bash
# Fetches the ONNX Runtime library (libonnxruntime.so.1.31.1, CPU) from the PyPI package
# onnxruntime 1.31.1, verifies its checksum, and prints its path (~/.cache/revo/ort). Revo loads
# it at run time (ort's load-dynamic). One fixed wheel (the one the checksum pins), whatever
# Python runs this script.
set -euo pipefail
exec "$(dirname "$0")/lib/fetch-from-wheel.sh" ort onnxruntime==1.31.1 \
  'onnxruntime-1.31.1-*.whl' onnxruntime/capi/libonnxruntime.so.1.31.1 \
  fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3 \
  --python-version 3.11 --platform manylinux_2_28_x86_64
