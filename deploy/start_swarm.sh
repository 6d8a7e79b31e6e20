#!/usr/bin/env bash
# Start a nomoat coordinator and N workers on this machine, or only one of the two roles on separate machines.
#
#   deploy/start_swarm.sh all [N]                        coordinator + N local workers (default 2) + a demo run
#   deploy/start_swarm.sh coordinator PUBLIC_IP [PORT]   coordinator for other machines (listens on 0.0.0.0)
#   deploy/start_swarm.sh worker COORDINATOR_ADDR [RUN] [PUBLIC_IP]   one worker (PUBLIC_IP: reachable address;
#                                                        leave it out behind NAT and the worker dials out only;
#                                                        export NOMOAT_FINGERPRINT=sha256:... as the coordinator
#                                                        printed it to pin its self-signed TLS certificate)
#
# Logs and state go to $NOMOAT_HOME (default ~/.nomoat). Stop everything with Ctrl-C (workers leave cleanly).
set -euo pipefail
cd "$(dirname "$0")/.."
SWARM=${SWARM:-.venv/bin/swarm}
HOME_DIR=${NOMOAT_HOME:-$HOME/.nomoat}
mkdir -p "$HOME_DIR"
role=${1:-all}

case "$role" in
  coordinator)
    public_ip=${2:?public IP or host name of this machine}
    port=${3:-50051}
    exec "$SWARM" coordinator --data-dir "$HOME_DIR/coordinator" --host 0.0.0.0 --announce-host "$public_ip" \
      --port "$port" --dht-port 31337
    ;;
  worker)
    coordinator=${2:?coordinator host:port}
    run=${3:-}
    public_ip=${4:-}
    if [ -n "$public_ip" ]; then
      exec "$SWARM" donate -c "$coordinator" --run "$run" --host 0.0.0.0 --announce-host "$public_ip"
    else
      exec "$SWARM" donate -c "$coordinator" --run "$run" --client-mode
    fi
    ;;
  all)
    workers=${2:-2}
    port=${PORT:-50051}
    trap 'kill -TERM -- -$$ 2>/dev/null || true' EXIT
    "$SWARM" coordinator --data-dir "$HOME_DIR/coordinator" --port "$port" >"$HOME_DIR/coordinator.log" 2>&1 &
    until grep -q "^coordinator:" "$HOME_DIR/coordinator.log" 2>/dev/null; do sleep 0.5; done
    "$SWARM" launch -c "127.0.0.1:$port" --operator-token-file "$HOME_DIR/coordinator/operator.token" \
      --name local --publish-interval-s 30 --averaging-progress-refresh-s 0.5 || true
    for i in $(seq 0 $((workers - 1))); do
      OMP_NUM_THREADS=1 "$SWARM" donate -c "127.0.0.1:$port" --run local --name "worker$i" \
        --identity "$HOME_DIR/worker$i.key" --no-progress >"$HOME_DIR/worker$i.log" 2>&1 &
    done
    echo "coordinator 127.0.0.1:$port, $workers workers; logs in $HOME_DIR. Try: $SWARM status"
    wait
    ;;
  *)
    echo "usage: $0 all [N] | coordinator PUBLIC_IP [PORT] | worker COORDINATOR_ADDR [RUN] [PUBLIC_IP]" >&2
    exit 2
    ;;
esac
