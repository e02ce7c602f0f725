# mcp-locks in a container: API keys required, locks kept in the /data volume.
#
#   docker build -t mcp-locks .
#   docker run -d --name locks -p 127.0.0.1:8765:8765 -v mcp-locks-data:/data mcp-locks
#   docker exec locks cat /data/admin.key                                   # written on first start
#   docker exec locks mcp-locks keys create --agent alice --workspace default
#
# Or register your own admin key instead of the file: docker run -e MCP_LOCKS_ADMIN_KEY=mlk_... ...
# Publish the port on 127.0.0.1 unless other machines must reach it (then put TLS in front).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mcp_locks ./mcp_locks
RUN pip install --no-cache-dir . && rm -rf /src/*

# A user of its own; the data directory is the only place it writes.
RUN useradd --system --user-group --uid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin mcp-locks \
    && mkdir -p /data \
    && chown mcp-locks:mcp-locks /data \
    && chmod 0700 /data

ENV MCP_LOCKS_DATA_DIR=/data \
    MCP_LOCKS_PORT=8765
VOLUME /data
WORKDIR /data
USER mcp-locks
EXPOSE 8765

# No curl in slim images: ask /healthz (no key needed) with the image's own Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MCP_LOCKS_PORT', '8765'), timeout=4)"]

# Bound to every interface so the published port reaches it: keys are required (never --insecure-no-auth,
# which the server refuses off loopback anyway). SIGTERM (docker stop) shuts it down cleanly.
ENTRYPOINT ["mcp-locks", "serve"]
CMD ["--host", "0.0.0.0"]
