# comfy-gateway: the gateway with its embedded KernieGen default backend.
# Build: docker build -t comfy-gateway .   Run: docker run -p 8190:8190 comfy-gateway
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 gateway
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY config ./config
RUN pip install --no-cache-dir . && mkdir -p /data && chown gateway /data

USER gateway
WORKDIR /data
# Listen on all interfaces inside the container; state (affinity store, KernieGen data) lives in /data.
ENV COMFY_GATEWAY_LISTEN_HOST=0.0.0.0
EXPOSE 8190
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8190/gateway/health').status == 200 else 1)"
ENTRYPOINT ["comfy-gateway"]
CMD ["serve"]
