# syntax=docker/dockerfile:1
# The vending service as a container: `vending serve` on 0.0.0.0:8080, for ECS Fargate
# behind an internal ALB (deploy/ecs/template.yaml; docs/deploy.md, "Container").
#
# Build stage: a statically linked binary (glibc, +crt-static). The target triple follows
# the platform being built, so `--platform linux/arm64` gives an aarch64 binary and
# `--platform linux/amd64` an x86_64 one. `make static` runs the same cargo command
# (tests/template/test_ecs_template.py keeps the two alike), and CI checks that binary
# is static.
#
# glibc and static linking: since glibc 2.34 the `files` and `dns` name-service modules
# live inside libc itself, so getaddrinfo (which the AWS SDK's resolver calls) works in
# a static binary without loading libnss_*.so, as long as /etc/nsswitch.conf names only
# `files` and `dns` (distroless/static's does). Bookworm's glibc is 2.36.
#
# Runtime stage: distroless/static (CA certificates, /etc/passwd, nsswitch.conf, tzdata,
# no shell, no libc), as the image's non-root user 65532. No secret is baked in: the
# task gets AWS credentials from its task role and settings from its environment.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY lambda lambda
COPY bench bench
# BuildKit cache mounts keep the registry and the target directory between builds; the
# binary is copied out of the cache mount before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-gnu" \
    && RUSTFLAGS='-C target-feature=+crt-static' \
       cargo build --release --locked --target "$target" -p vending --bin vending \
    && install -D -m 0755 "target/$target/release/vending" /out/vending

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/vending /usr/local/bin/vending
USER 65532:65532
EXPOSE 8080
ENV VENDING_LOG_FORMAT=json
# Clean stop on SIGTERM: in-flight requests drain (ECS sends SIGTERM, then SIGKILL after
# the task's stopTimeout).
STOPSIGNAL SIGTERM
# `vending serve --listen 0.0.0.0:8080` by default. The subcommand sits in CMD so that a
# task can run another one with the same image: the scheduled sweep in
# deploy/ecs/template.yaml overrides the command with ["sweep"].
ENTRYPOINT ["/usr/local/bin/vending"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
