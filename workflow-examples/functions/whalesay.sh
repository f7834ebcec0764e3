#!/bin/sh
# Draws a whale saying the request body (Fission Workflows' classic example).
set -eu
text=$(cat | tr -d '\r' | head -c 200)
[ -n "$text" ] || text="..."
len=$(printf '%s' "$text" | wc -c)
line=$(printf '%*s' "$((len + 2))" '' | tr ' ' '-')
printf ' %s\n< %s >\n %s\n' "$line" "$text" "$line"
cat <<'WHALE'
    \
     \
      \
                    ##        .
              ## ## ##       ==
           ## ## ## ##      ===
       /""""""""""""""""___/ ===
  ~~~ {~~ ~~~~ ~~~ ~~~~ ~~ ~ /  ===- ~~~
       \______ o          __/
        \    \        __/
          \____\______/
WHALE
