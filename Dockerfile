# wcs in a container: docs/operations.md#docker
#   docker build -t wcs .
#   docker run -d --name wcs -p 8081:8081 -p 8444:8444 -p 8080:8080 -p 8443:8443 \
#       -p 1935:1935 -p 554:554 -v wcs-data:/var/lib/wcs wcs
# Ports, the config file and the health check below follow etc/flashphoner.properties; a config
# of your own goes in with -v /path/flashphoner.properties:/etc/wcs/flashphoner.properties:ro.

# The package and its dependencies in a venv. Every dependency ships manylinux wheels (PyAV
# and aiortc bring their own FFmpeg, libvpx and libopus), so no compiler or FFmpeg is needed.
FROM python:3.11-slim AS build
RUN python -m venv /opt/wcs/venv
COPY pyproject.toml setup.py README.md /src/
COPY twisted /src/twisted
COPY wcs /src/wcs
RUN /opt/wcs/venv/bin/pip install --no-cache-dir --disable-pip-version-check /src \
    # twistd lists its plugins through a cache it writes on first use: write it now, as the
    # user at run time cannot write into the venv.
    && /opt/wcs/venv/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

# The official Flashphoner WebSDK bundle (package-lock.json pins it) for the demo pages.
FROM node:20-slim AS websdk
WORKDIR /websdk
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim
# redis-server: `--workers N` runs a private one when no cluster_redis_url is set (docs/cluster.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 wcs \
    && useradd --system --uid 10001 --gid wcs --home-dir /var/lib/wcs --create-home \
        --shell /usr/sbin/nologin wcs
COPY --from=build /opt/wcs/venv /opt/wcs/venv
COPY --from=websdk /websdk/node_modules/@flashphoner/websdk /opt/wcs/websdk
COPY etc/flashphoner.properties /etc/wcs/flashphoner.properties
ENV PATH=/opt/wcs/venv/bin:$PATH \
    WCS_WEBSDK_DIR=/opt/wcs/websdk \
    PYTHONUNBUFFERED=1
# The working directory holds tls/ (the self-signed pair) and snapshots/ (snapshot_auto_dir).
WORKDIR /var/lib/wcs
VOLUME /var/lib/wcs

# http.port, https.port, ws.port, wss.port, rtmp.port, rtsp.port. RTSP over UDP and WebRTC
# also use ephemeral UDP ports: publish over RTSP/TCP, or run with --network host.
EXPOSE 8081 8444 8080 8443 1935 554

# Numeric, so that Kubernetes' runAsNonRoot can check it. Binding 554 as this user works because
# Docker (20.10+) sets net.ipv4.ip_unprivileged_port_start=0 in the container's network namespace.
USER 10001:10001

# GET /health on http.port answers 200 {"status":"ok"} while the server is alive; urlopen raises
# (exit 1) on anything else. Change the port here if your config moves http.port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/health', timeout=4)"]

# Foreground, logs to stdout, no pid file; SIGTERM (docker stop) stops cleanly, SIGHUP reloads.
CMD ["twistd", "-n", "--pidfile=", "wcs", "--config", "/etc/wcs/flashphoner.properties"]
