# syntax=docker/dockerfile:1
# Build a static binary, then run it as an unprivileged user on a minimal
# image with no shell.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The release; tag the image with it too (docker build -t aggd:0.1.0 .).
ARG VERSION=0.1.0
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X github.com/aggd/aggd/internal/telemetry.version=${VERSION}" -o /out/aggd ./cmd/aggd
RUN mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/aggd /usr/local/bin/aggd
# The write-ahead log and the send queues on disk.
COPY --from=build --chown=nonroot:nonroot /out/data /var/lib/aggd
VOLUME /var/lib/aggd
USER nonroot:nonroot
# gRPC (and OTLP/gRPC), admin /metrics, DogStatsD, OTLP/HTTP (when set).
EXPOSE 8127 8128 8125/udp 4318
ENV AGGD_LISTEN=:8127 \
    AGGD_ADMIN_LISTEN=:8128 \
    AGGD_LOG_FORMAT=json \
    AGGD_WAL_DIR=/var/lib/aggd
ENTRYPOINT ["/usr/local/bin/aggd"]
