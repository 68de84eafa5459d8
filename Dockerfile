# KoELECTRA worker image: CPU-only PyTorch, non-root, model fetched on first start (default)
# or baked in at build time:
#
#   docker build -t koelectra-worker .                                # model downloaded on first start into HF_HOME (/models/hf)
#   docker build -t koelectra-worker --build-arg PRELOAD_MODEL=1 .    # model saved into the image at /opt/model
#   docker build --build-arg PRELOAD_MODEL=1 --build-arg MODEL=org/other-model --build-arg MODEL_REVISION=<sha> .
#   docker build --build-arg PRELOAD_MODEL=dir .                      # the local model directory ./model/ copied to /opt/model
#
# PRELOAD_MODEL must be 0, 1 or dir: it selects the stage `model-0`, `model-1` or `model-dir` below.
# Build with BuildKit (DOCKER_BUILDKIT=1; the default of Docker 23+ and of `docker compose`): it builds
# only the stages the chosen one needs. The legacy builder (docker-compose 1.x without
# COMPOSE_DOCKER_CLI_BUILD=1 DOCKER_BUILDKIT=1) builds every stage: model-1 would download the model
# and model-dir would fail without ./model/, whatever PRELOAD_MODEL says.
# No `# syntax=` line on purpose: the frontend built into the engine reads this file, and the directive
# would make every BuildKit build pull docker/dockerfile from Docker Hub (fails on offline builders).
#
# Elsewhere from the outside: PYTHON_IMAGE (any Debian-like image with python3.11 and its venv module,
# `python` on PATH), TORCH_INDEX_URL (the CPU wheel index; PyPI works, but its torch is the CUDA build:
# about 4 GB more), and pip's index for the rest (PyPI).
ARG PYTHON_IMAGE=python:3.11-slim
ARG PRELOAD_MODEL=0

# ---------------------------------------------------------------------------------------------
# build: a virtual environment with CPU torch and the worker package
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU wheels of torch (no CUDA libraries, ~10x smaller image). Installed first so that
# `pip install .` finds its torch requirement already satisfied and does not pull the CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC="torch>=2.4"
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
# ONNX Runtime is a core dependency; [engines] adds OpenVINO (+ NNCF): WORKER_ENGINE=auto measures them all at start-up.
RUN pip install ".[engines]" \
 && python -c "import torch, transformers, confluent_kafka, onnxruntime, openvino, worker.engines; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'onnxruntime', onnxruntime.__version__, 'openvino', openvino.__version__)"

# ---------------------------------------------------------------------------------------------
# runtime: the venv on a clean slim image, running as an unprivileged user
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" worker \
 && useradd --system --uid "${UID}" --gid worker --home-dir /home/worker --create-home --shell /usr/sbin/nologin worker \
 && mkdir -p /models/hf /models/engines /opt/model \
 && chown -R worker:worker /models /opt/model
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models/hf \
    WORKER_ENGINE_CACHE_DIR=/models/engines \
    HF_HUB_DISABLE_TELEMETRY=1 \
    WORKER_METRICS_HOST=0.0.0.0 \
    WORKER_METRICS_PORT=8000
WORKDIR /app
USER ${UID}:${UID}
EXPOSE 8000
# /healthz answers 200 while the poll loop is alive. The start period covers the model download
# and warm-up on first start (failures inside it do not count).
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WORKER_METRICS_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["worker"]
CMD ["run"]

# ---------------------------------------------------------------------------------------------
# PRELOAD_MODEL=0: nothing baked in; the model is fetched on first start into HF_HOME
# (mount a volume at /models to keep it across restarts).
FROM runtime AS model-0

# PRELOAD_MODEL=1: the model and tokenizer are downloaded now and saved as a local model
# directory, which WORKER_MODEL points at; the container then needs no access to the hub.
FROM runtime AS model-1
ARG MODEL=daekeun-ml/koelectra-small-v3-nsmc
ARG MODEL_REVISION=
RUN HF_HOME=/tmp/preload python -c "import os; from transformers import AutoTokenizer, AutoModelForSequenceClassification; name = os.environ['MODEL']; rev = os.environ.get('MODEL_REVISION') or None; AutoTokenizer.from_pretrained(name, revision=rev).save_pretrained('/opt/model'); AutoModelForSequenceClassification.from_pretrained(name, revision=rev).save_pretrained('/opt/model'); print('saved', name, rev or 'main', 'to /opt/model')" \
 && rm -rf /tmp/preload
ENV WORKER_MODEL=/opt/model \
    HF_HUB_OFFLINE=1

# ---------------------------------------------------------------------------------------------
# PRELOAD_MODEL=dir: a local model directory (config, weights, tokenizer files), placed at ./model/ in
# the build context, copied as it is. Neither the build nor the container needs the hub.
FROM runtime AS model-dir
COPY model/ /opt/model/
ENV WORKER_MODEL=/opt/model \
    HF_HUB_OFFLINE=1

# ---------------------------------------------------------------------------------------------
FROM model-${PRELOAD_MODEL} AS final
