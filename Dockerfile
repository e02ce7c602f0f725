# mcp-locks in a container: API keys required, locks kept in the /data volume.
#
#   docker build -t mcp-locks .
#   docker run -d --name locks -p 127.0.0.1:8765:8765 -v mcp-locks-data:/data mcp-locks
#   docker exec locks cat /data/admin.key                                   # written on first start
#   docker exec locks mcp-locks keys create --agent alice --workspace default
#
# Arguments after the image name are flags of `mcp-locks serve`. Host and port come from the environment
# or from those flags, and the healthcheck follows either way:
#   docker run -d -p 127.0.0.1:9000:9000 -v mcp-locks-data:/data mcp-locks --port 9000
#   docker run -d -p 127.0.0.1:9000:9000 -v mcp-locks-data:/data -e MCP_LOCKS_PORT=9000 mcp-locks
# A host folder instead of a volume (a bind mount): create it, and run as its owner (still not root):
#   mkdir -p locks-data
#   docker run -d --user "$(id -u):$(id -g)" -v "$PWD/locks-data:/data" -p 127.0.0.1:8765:8765 mcp-locks
# Or register your own admin key instead of the file: docker run -e MCP_LOCKS_ADMIN_KEY=mlk_... ...
# Publish the port on 127.0.0.1 unless other machines must reach it (then put TLS in front).
# Dependencies are pinned by docker/constraints.txt; refresh it with `python docker/freeze.py > docker/constraints.txt`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY docker/constraints.txt ./docker/constraints.txt
COPY pyproject.toml README.md ./
COPY mcp_locks ./mcp_locks
RUN pip install --no-cache-dir --constraint docker/constraints.txt . && rm -rf /src/*
COPY docker/healthcheck.py /usr/local/lib/mcp-locks/healthcheck.py

# A user of its own; the data directory is the only place it writes. With --user UID:GID (a bind mount's
# owner) the server runs as that user instead: nothing else in the image needs writing, and HOME is /data.
RUN useradd --system --user-group --uid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin mcp-locks \
    && mkdir -p /data \
    && chown mcp-locks:mcp-locks /data \
    && chmod 0700 /data

# Bound to every interface so the published port reaches it: keys are required (never --insecure-no-auth,
# which the server refuses off loopback anyway).
ENV MCP_LOCKS_DATA_DIR=/data \
    MCP_LOCKS_HOST=0.0.0.0 \
    MCP_LOCKS_PORT=8765 \
    HOME=/data
VOLUME /data
WORKDIR /data
USER mcp-locks
EXPOSE 8765

# No curl in slim images: the image's own Python asks /healthz (no key needed) at the host and port the
# server took from its flags (read from its command line) or from MCP_LOCKS_HOST / MCP_LOCKS_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/usr/local/lib/mcp-locks/healthcheck.py"]

# SIGTERM (docker stop) shuts it down cleanly. No CMD arguments: whatever follows the image name in
# `docker run` is passed to `mcp-locks serve` as flags, and overrides nothing the image needs.
ENTRYPOINT ["mcp-locks", "serve"]
CMD []
