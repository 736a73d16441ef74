# sessionhub in a container: a build stage with the Rust toolchain, and a small runtime
# stage that runs the binary as a user of its own. Not built in CI (no container engine
# there); scripts/package-test.sh lints this file and deploy/compose.yaml.
#
#   docker build -t sessionhub .
#   docker run -p 8080:8080 -e SESSIONHUB_WS_AUTH=session -e SESSIONHUB_API_KEY=... sessionhub

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sessionhub-server \
 && strip target/release/sessionhub

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/sessionhub --create-home sessionhub
COPY --from=build /src/target/release/sessionhub /usr/bin/sessionhub
USER 10001
# Off loopback, sessionhub refuses to start without socket authentication and an API key
# (or SESSIONHUB_INSECURE=true): pass them with -e.
ENV SESSIONHUB_LISTEN=0.0.0.0:8080 \
    SESSIONHUB_DATA_DIR=/var/lib/sessionhub \
    SESSIONHUB_LOG_FORMAT=json
VOLUME /var/lib/sessionhub
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD curl -fsS -o /dev/null http://127.0.0.1:8080/readyz || exit 1
# SIGTERM closes the sockets and flushes the journal; give it time (docker stop -t 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/sessionhub"]
CMD ["serve"]
