# NVIDIA Triton Inference Server 24.10 (Triton 2.51, the release the local pip-wheel server is),
# with the native ONNX Runtime and TensorRT backends. The raw-text models (`<task>_text`, Python
# backend) tokenize with the `tokenizers` package, which the NGC image lacks.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

RUN pip install --no-cache-dir "tokenizers>=0.19,<1"

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=10 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
