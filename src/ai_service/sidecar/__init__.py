"""The AI-server telemetry sidecar (`ai-service sidecar`).

It runs on the AI server next to vLLM and WhisperX and answers `GET /status`
with four sections, each read by its own collector:

    gpu         NVML (nvidia-ml-py)                    gpu.py
    containers  Docker Engine API on the unix socket   containers.py
    vllm        vLLM Prometheus `/metrics`             vllm_metrics.py
    whisperx    WhisperX reachability                  whisperx.py

A collector never raises: a source that cannot be read yields its section with
`"available": false` and the reason, and `/status` still answers 200.
"""
