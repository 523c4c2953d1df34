# The Switchyard operator. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t switchyard-operator:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchyard-operator --bin switchyard-operator

# Distroless: no shell, no package manager; runs as UID 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/switchyard-operator /usr/local/bin/switchyard-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/switchyard-operator"]
