#!/bin/sh
# Prints one fortune, picked by the request's idempotency key when there is one
# (so a retried call answers the same), else by the clock.
set -eu
seed=$(printf '%s' "${HTTP_X_FUSION_IDEMPOTENCY_KEY:-$(date +%N)}" | cksum | cut -d' ' -f1)
n=$((seed % 5))
case $n in
  0) echo "A journey of a thousand miles begins with a single step." ;;
  1) echo "You will be hungry again in one hour." ;;
  2) echo "Fortune favors the bold." ;;
  3) echo "Simplicity is prerequisite for reliability." ;;
  *) echo "The best way to predict the future is to invent it." ;;
esac
