# The bundled nodejs runtime (`fusion/nodejs:0.1.0`): environments/nodejs/server.js,
# speaking Fission's runtime protocol on port 8888. Function pods run it as their
# `runtime` container; the code arrives in /userfunc through the fetcher sidecar.
# Build from the repository's root:
#   docker build -f deploy/kubernetes/images/nodejs.Dockerfile -t fusion/nodejs:0.1.0 .
FROM node:20-bookworm-slim
COPY environments/nodejs/server.js /runtime/server.js
ENV RUNTIME_HOST=0.0.0.0 \
    RUNTIME_PORT=8888 \
    USERFUNC_DIR=/userfunc \
    FUSION_NO_STDIN_WATCH=1 \
    NODE_ENV=production
# In a pod stdin is not the server's pipe: FUSION_NO_STDIN_WATCH keeps the
# runtime from exiting at its EOF.
USER 65532:65532
EXPOSE 8888
CMD ["node", "/runtime/server.js"]
