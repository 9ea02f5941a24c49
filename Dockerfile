# CPU image for the medseg inference service (ONNX Runtime or OpenVINO behind FastAPI/uvicorn).
#
# Build and run (mount the exported model read-only; the container never trains). Choose
# the variant on a machine with the deployment's CPU: `--format best` measures ONNX Runtime
# and OpenVINO in fp32, bf16 and int8 and writes model.deploy.json and model.probe.npz
# beside the model, which the service follows after a parity check (`--format onnx`: ONNX
# Runtime, float32):
#   medseg export runs/course-full/train-full-unet-2d --format best --out runs/export/model.onnx
#   docker build -t medseg-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/export:/models:ro" \
#       -e MEDSEG_NUM_CLASSES=3 medseg-serve
#   curl -F "file=@scan.nii.gz" http://127.0.0.1:8000/v1/segment -o mask.nii.gz -D -
#
# The service needs onnxruntime (and openvino for a variant chosen for it) at run time; torch is installed (CPU wheel, from the
# PyTorch index so no CUDA libraries are pulled) because medseg_helpers imports it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEDSEG_MODEL=/models/model.onnx \
    MEDSEG_NUM_CLASSES=2 \
    MEDSEG_PORT=8000 \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app

# Dependencies first so code edits do not invalidate this layer.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3"

COPY pyproject.toml README.md ./
COPY medseg_helpers ./medseg_helpers
COPY data_download ./data_download
RUN pip install ".[deploy,openvino]"

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin medseg
USER medseg

EXPOSE 8000

# python-slim has no curl: probe /health with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MEDSEG_PORT', '8000') + '/health', timeout=4)" || exit 1

# Shell form so the environment variables expand; exec replaces the shell (signals reach
# uvicorn). Bind 0.0.0.0 inside the container only; publish the port explicitly.
CMD exec medseg serve "$MEDSEG_MODEL" --num-classes "$MEDSEG_NUM_CLASSES" \
    --host 0.0.0.0 --port "$MEDSEG_PORT"
