"""Set-up check: does the installed llama-cpp-python really decode on this machine?

Runs dvai_bridge's backend probe (a 96-token prompt and one decoded token, in a child process,
so a crash is reported rather than suffered) with the embedded SmolLM2 GGUF, bypassing the
probe cache. Exit 0 when it decodes; otherwise says how it failed.
"""

import sys

from dvai_bridge.backends.probe import probe

result = probe("llama", use_cache=False)
if result.ok:
    print(result.detail, file=sys.stderr)
    sys.exit(0)
print(f"llama-cpp-python cannot generate on this machine: {result.detail}", file=sys.stderr)
sys.exit(1)
