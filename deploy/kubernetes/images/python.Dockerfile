# The bundled python runtime (`fusion/python:0.1.0`): environments/python/server.py
# with its flask shim, speaking Fission's runtime protocol on port 8888. Function
# pods run it as their `runtime` container; the code arrives in /userfunc through
# the fetcher sidecar. Build from the repository's root:
#   docker build -f deploy/kubernetes/images/python.Dockerfile -t fusion/python:0.1.0 .
FROM python:3.12-slim-bookworm
COPY environments/python/server.py environments/python/flask.py /runtime/
ENV RUNTIME_HOST=0.0.0.0 \
    RUNTIME_PORT=8888 \
    USERFUNC_DIR=/userfunc \
    FUSION_NO_STDIN_WATCH=1 \
    PYTHONUNBUFFERED=1
# In a pod stdin is not the server's pipe: FUSION_NO_STDIN_WATCH keeps the
# runtime from exiting at its EOF.
USER 65532:65532
EXPOSE 8888
CMD ["python3", "/runtime/server.py"]
