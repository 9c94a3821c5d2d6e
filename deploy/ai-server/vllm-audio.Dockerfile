# vLLM with its `audio` extra, for Qwen2-Audio and Voxtral: the stock
# vllm/vllm-openai image leaves the audio dependencies out.
# The extra must be installed at the base image's own version, or the
# install would replace vLLM itself.
ARG VLLM_VERSION=0.10.2
FROM vllm/vllm-openai:v${VLLM_VERSION}
ARG VLLM_VERSION
RUN uv pip install --system --no-cache "vllm[audio]==${VLLM_VERSION}"
