# The bundled binary runtime (`fusion/binary:0.1.0`): `fusion runtime binary`,
# which runs the function's executable or shell script once per request, so the
# image has a shell and coreutils. It takes the binary from the fusion image:
# build that first. From the repository's root:
#   docker build -f deploy/kubernetes/images/fusion.Dockerfile -t fusion/fusion:0.1.0 .
#   docker build -f deploy/kubernetes/images/binary.Dockerfile -t fusion/binary:0.1.0 .
ARG FUSION_IMAGE=fusion/fusion:0.1.0
FROM ${FUSION_IMAGE} AS fusion

FROM debian:bookworm-slim
# Shell scripts run under busybox's sh, as in Fission's Alpine image.
RUN apt-get update && apt-get install -y --no-install-recommends busybox \
    && rm -rf /var/lib/apt/lists/*
COPY --from=fusion /usr/local/bin/fusion /usr/local/bin/fusion
ENV RUNTIME_HOST=0.0.0.0 \
    RUNTIME_PORT=8888 \
    USERFUNC_DIR=/userfunc \
    FUSION_NO_STDIN_WATCH=1
# In a pod stdin is not the server's pipe: FUSION_NO_STDIN_WATCH keeps the
# runtime from exiting at its EOF.
USER 65532:65532
EXPOSE 8888
ENTRYPOINT ["/usr/local/bin/fusion"]
CMD ["runtime", "binary"]
