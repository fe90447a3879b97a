# syntax=docker/dockerfile:1
# The learn worker image: `janus worker` (and `janus init`, the first version), installed from the
# project's own list (pyproject.toml: the learn, cpu and s3 extras). torch comes from the CPU wheel
# index unless told otherwise. From the repository root:
#
#   docker build -f deploy/worker.Dockerfile -t janus-worker .
#   docker build -f deploy/worker.Dockerfile -t janus-worker:cuda \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 --build-arg ORT=gpu .
#
# The CUDA image needs only the host's NVIDIA driver (torch's wheels bring the CUDA libraries).
# The build fails if the installed torch is not the index's build (a CUDA torch from PyPI in the
# CPU image, or the reverse). The source stays in /app (an editable install): the packages read
# their own files from beside their modules, and `janus init` reads examples/fashion-mnist from
# beside the packages. Runs as uid 10001 (janus), owner of /data.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG ORT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY adapters_store adapters_store
COPY learner learner
COPY service service
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --extra-index-url "${TORCH_INDEX}" --editable ".[learn,${ORT},s3]" \
 && python -c "import sys, torch; \
cuda = torch.version.cuda; want = sys.argv[1].rstrip('/').rsplit('/', 1)[-1] != 'cpu'; \
print('torch', torch.__version__, 'CUDA', cuda); \
sys.exit(0 if (cuda is not None) == want else \
f'torch {torch.__version__} (CUDA {cuda}) is not the build of TORCH_INDEX={sys.argv[1]}')" \
    "${TORCH_INDEX}"

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 janus \
 && useradd --system --uid 10001 --gid janus --create-home --home-dir /home/janus janus \
 && mkdir -p /data \
 && chown janus:janus /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY examples /app/examples
COPY --chmod=755 deploy/probe.py /usr/local/bin/janus-probe
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/janus \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    JANUS_DATA_DIR=/data
WORKDIR /app
USER 10001:10001
VOLUME /data
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["janus-probe", "worker"]
ENTRYPOINT ["tini", "--"]
CMD ["janus", "worker", "--loglevel", "INFO"]
