# The Switchyard node-agent. Build from the repository root:
#   docker build -f docker/node-agent.Dockerfile -t switchyard-node-agent:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchyard-node-agent --bin switchyard-node-agent

# Distroless: no shell, no package manager; runs as UID 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/switchyard-node-agent /usr/local/bin/switchyard-node-agent
USER 65532:65532
EXPOSE 4001/tcp 4002/udp 9090/tcp
ENTRYPOINT ["/usr/local/bin/switchyard-node-agent"]
