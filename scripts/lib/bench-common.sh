# Shared by the scripts/bench-* load scripts (sourced, not run): the release
# binary (BIN=/path/to/freshgate measures another build, e.g. scripts/build-pgo's,
# without building), a scratch directory, and the processes they start, all
# stopped and removed on exit (also on Ctrl-C / SIGTERM).
if [[ -v BIN ]]; then
  # Set but not a program (e.g. BIN=$(./scripts/build-pgo) after it failed):
  # never measure the plain build under the other's name.
  [[ -x $BIN ]] || { echo "BIN=$BIN is not an executable" >&2; exit 1; }
  bin=$BIN
else
  cargo build --release --locked --bin freshgate
  bin=$PWD/target/release/freshgate
fi
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
trap "exit 130" INT TERM
# A free loopback port (benchmarks only: the tests use their own allocator).
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_healthy ADMIN_PORT: until freshgate's admin listener answers (10 s at most).
wait_healthy() {
  for _ in $(seq 100); do curl -sf "127.0.0.1:$1/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "freshgate on admin port $1 did not come up" >&2
  return 1
}
# metric ADMIN_PORT NAME [LABEL]: the sum of NAME's samples (those with LABEL).
metric() {
  curl -sf "127.0.0.1:$1/metrics" |
    awk -v m="$2" -v l="${3:-}" '($1 == m || index($1, m "{") == 1) && index($1, l) {s+=$2} END {printf "%d", s}'
}
