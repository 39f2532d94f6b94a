# comfy-gateway: the gateway (its request path compiled), its embedded KernieGen and ComfyUI's web UI, with Redis
# support.
#
#   docker build -t comfy-gateway .
#   docker run -p 8190:8190 comfy-gateway
#
# Configuration: COMFY_GATEWAY_* environment variables, and a TOML file mounted read-only and named by
# COMFY_GATEWAY_CONFIG, e.g. -v ./gateway.toml:/etc/comfy-gateway/gateway.toml:ro
# -e COMFY_GATEWAY_CONFIG=/etc/comfy-gateway/gateway.toml. The port is COMFY_GATEWAY_LISTEN_PORT (set here, so it
# beats a listen_port in the file); the health check reads the same variable. State lives in /data.

# Build stage: wheels of the gateway and of everything it needs, the web UI (the frontend extra) included. The
# gateway's request path is compiled with mypyc (setup.py, COMFY_GATEWAY_COMPILE=1): a C compiler is needed here
# and only here.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gateway ./gateway
RUN COMFY_GATEWAY_COMPILE=1 pip wheel --no-cache-dir --wheel-dir /wheels '.[frontend]'

# Run stage: those wheels installed, nothing else; no compiler, no sources.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gateway && mkdir -p /data /etc/comfy-gateway && chown gateway /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'comfy-gateway[frontend]' && rm -rf /wheels
COPY config/gateway.toml /etc/comfy-gateway/gateway.example.toml

USER gateway
WORKDIR /data
# Listen on all interfaces inside the container.
ENV COMFY_GATEWAY_LISTEN_HOST=0.0.0.0 \
    COMFY_GATEWAY_LISTEN_PORT=8190 \
    PYTHONUNBUFFERED=1
EXPOSE 8190
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('COMFY_GATEWAY_LISTEN_PORT', '8190'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/gateway/health', timeout=2).status == 200 else 1)"]
# SIGTERM (docker stop) drains requests in flight for limits.drain_seconds: give `docker stop` a longer -t.
STOPSIGNAL SIGTERM
ENTRYPOINT ["comfy-gateway"]
CMD ["serve"]
