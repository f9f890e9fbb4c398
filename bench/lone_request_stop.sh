#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# How long a request that runs alone keeps the server busy after its deadline: a 1024-step IG on a
# ~600-token prompt with a 4 s deadline, then a one-token Logprobs call timed right after the
# DEADLINE_EXCEEDED (its latency is what was still running). Run with the bound on and off:
#   bench/lone_request_stop.sh 0.25 50812 MODEL_DIR; bench/lone_request_stop.sh 1000 50811 MODEL_DIR
set -u
cd "$(dirname "$0")/.."
U=$1; PORT=$2; MODEL=${3:-/tmp/llama-512x8}
build/server/attribution-server --model m=$MODEL --listen 127.0.0.1:$PORT --max_tokens 4096 --max_steps 1024 \
  --max_uncontended_batch_seconds $U > /tmp/lone_request_stop_$PORT.log 2>&1 &
SRV=$!
for i in $(seq 100); do build/client/attribution-cli --server 127.0.0.1:$PORT logprobs --prompt "hi" --target " there" >/dev/null 2>&1 && break; sleep 1; done
PROMPT=$(python3 -c "print(' '.join(['the quick brown fox jumps over the lazy dog']*60))")
# warm the cost model with a short IG
build/client/attribution-cli --server 127.0.0.1:$PORT attribute --prompt "$PROMPT" --target " dog" --n_steps 16 --timeout 60 >/dev/null 2>&1
t0=$(date +%s.%N)
build/client/attribution-cli --server 127.0.0.1:$PORT attribute --prompt "$PROMPT" --target " dog" --n_steps 1024 --timeout 4 > /tmp/lone_request_stop_$PORT.out 2>&1
t1=$(date +%s.%N)
build/client/attribution-cli --server 127.0.0.1:$PORT logprobs --prompt "hi" --target " there" >/dev/null 2>&1
t2=$(date +%s.%N)
echo "max_uncontended_batch_seconds=$U ig_returned_after_s=$(echo "$t1-$t0"|bc) logprobs_after_deadline_s=$(echo "$t2-$t1"|bc) ($(tail -1 /tmp/lone_request_stop_$PORT.out))"
kill $SRV; wait $SRV 2>/dev/null
