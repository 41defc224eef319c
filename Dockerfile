# One image for every service: the command picks which one runs, as on a developer's machine
# (`python -m services NAME --host H --port P`). The default is the embedded gateway.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_CONFIG=/app/gateway.yaml \
    GATEWAY_DATA_DIR=/var/lib/gateway

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway -m 0750 /var/lib/gateway

WORKDIR /app

# Runtime dependencies only (no test tools); a layer of its own so code changes reuse it.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY services/ services/
COPY gateway.yaml ./
# The ONNX embedding models, exported from the packaged weights: the float one
# (services/kernel/encoder_onnx.py; without it the encoder falls back to torch) and the
# classifier's int8 one (services/kernel/encoder_int8.py; without it the classifier uses
# the float one, and its heads, trained on the int8 vectors, refuse it).
RUN python -m services.kernel.encoder_onnx && python -m services.kernel.encoder_int8
# Bytecode is made here because the root filesystem is read-only at run time.
RUN python -m compileall -q services

USER 10001:10001
# The data folder holds the router's usage spool (and the SQLite file in embedded mode):
# mount a volume there. No VOLUME line, so no anonymous volume appears unasked.
# The services' ports, and their metrics ports (`--metrics-port`, the port + 1000).
EXPOSE 8080 8081 8082 8083 8084 9080 9081 9082 9083 9084

# Health checks live in docker-compose.yml and the Kubernetes probes: the port depends on
# which service the command starts, so no single HEALTHCHECK here would be right.
ENTRYPOINT ["python", "-m", "services"]
CMD ["gateway", "--host", "0.0.0.0"]
