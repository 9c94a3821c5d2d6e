"""Mirror mode, as the telephony service uses it: one call, local or remote by a flag.

    # the flag off: the analysis runs here, and the job is mirrored into the service
    AI_SERVICE_URL=http://127.0.0.1:8080 AI_SERVICE_TOKEN=... \\
        python examples/telephony_mirror.py call-42 "the customer wants to cancel"

    # the flag on for call_analysis: a remote worker runs it, this code waits for it
    AI_SERVICE_REMOTE_TASK_TYPES=call_analysis AI_SERVICE_URL=... AI_SERVICE_TOKEN=... \\
        python examples/telephony_mirror.py call-42 "the customer wants to cancel"

The code below is the same in both cases. It prints the analysis (a JSON
object) on stdout, and on stderr which way it went and the job's id.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ai_service_client import Client

TASK_TYPE = "call_analysis"
MODEL_PROFILE = "qwen2.5-14b"


def analyse_call_locally(input: dict[str, Any]) -> dict[str, Any]:
    """telephony's existing in-process analysis (a keyword rule here)."""
    text = str(input["text"]).lower()
    label = "churn_risk" if "cancel" in text else "neutral"
    return {"label": label, "words": len(text.split()), "analysed_by": "local"}


def main(argv: list[str]) -> int:
    call_id = argv[1] if len(argv) > 1 else "call-1"
    text = argv[2] if len(argv) > 2 else "hello, I would like to cancel my contract"
    with Client(owner_service="telephony") as client:  # AI_SERVICE_URL, AI_SERVICE_TOKEN
        mode = "remote" if TASK_TYPE in client.config.remote_task_types else "local"
        print(f"{TASK_TYPE} for {call_id}: {mode}", file=sys.stderr)
        result = client.run(
            TASK_TYPE,
            owner_ref=call_id,
            model_profile=MODEL_PROFILE,
            input={"text": text},
            local=analyse_call_locally,
            # The same call id never makes a second job (a rerun returns the first's result).
            idempotency_key=f"{TASK_TYPE}:{call_id}",
            wait_timeout=120,
        )
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
