# optout-proxy: the same steps as the README's run command, as a non-root user.
#   docker build -t optout-proxy .
#   docker run -e OPTOUT_PROXYAUTH=crawler:secret -p 8080:8080 -v "$PWD/policies:/app/policies" \
#              -v optout-ca:/home/optout/.mitmproxy -v "$PWD/audit:/app/audit" optout-proxy
# It listens on 0.0.0.0, so it refuses to start as an open proxy: set OPTOUT_PROXYAUTH
# (user:pass, or @/path/to/htpasswd), or OPTOUT_TRUSTED_NETWORK=true when the network in
# front of it is trusted.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 optout
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY policies ./policies
RUN python3 -m venv /app/.venv && /app/.venv/bin/pip install -q . \
    && mkdir -p /app/audit /home/optout/.mitmproxy \
    && chown -R optout:optout /app/audit /app/policies /home/optout/.mitmproxy

USER optout
# Policy files (and their registries) are mountable; mitmproxy's CA lives in a volume so
# crawlers keep trusting the same CA across restarts; the audit log is kept outside too.
VOLUME ["/app/policies", "/home/optout/.mitmproxy", "/app/audit"]
EXPOSE 8080
ENV OPTOUT_PROXYAUTH="" OPTOUT_TRUSTED_NETWORK="false"
ENTRYPOINT ["/bin/sh", "-c", "exec /app/.venv/bin/optout-proxy run --listen-host 0.0.0.0 --listen-port 8080 --set \"proxyauth=$OPTOUT_PROXYAUTH\" --set \"optout_trusted_network=$OPTOUT_TRUSTED_NETWORK\" \"$@\"", "--"]
CMD ["--policy", "policies/default.yaml"]
