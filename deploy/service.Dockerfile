# syntax=docker/dockerfile:1
# The serving image: `bentoml serve service.service:Janus`, installed from the project's own list
# (pyproject.toml: [project] dependencies and the cpu and s3 extras). No torch: it serves a
# version through its model.onnx with ONNX Runtime (JANUS_ENGINE=onnx). From the repository root:
#
#   docker build -f deploy/service.Dockerfile -t janus-service .
#
# The source stays in /app (an editable install): the packages read their own files from beside
# their modules (the web console's static/). Runs as uid 10001 (janus); /data (JANUS_DATA_DIR,
# the store on one host) belongs to it, so a fresh named volume mounted there does too.
# deploy/README.md says how to run it.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY adapters_store adapters_store
COPY learner learner
COPY service service
RUN --mount=type=cache,target=/root/.cache/pip pip install --editable ".[cpu,s3]"

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
COPY --chmod=755 deploy/probe.py /usr/local/bin/janus-probe
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/janus \
    BENTOML_HOME=/home/janus/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    JANUS_DATA_DIR=/data \
    JANUS_ENGINE=onnx
WORKDIR /home/janus
USER 10001:10001
VOLUME /data
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["janus-probe", "http", "http://127.0.0.1:3000/livez"]
ENTRYPOINT ["tini", "--"]
CMD ["bentoml", "serve", "service.service:Janus", "--host", "0.0.0.0", "--port", "3000"]
