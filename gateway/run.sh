#!/usr/bin/env bash
# Run the gateway tests: set up .venv-gateway, start the LiteLLM proxy on
# loopback, run `pytest -m gateway tests/gateway` against it with the batcher
# venv, and stop the proxy on every exit path (SIGKILL of this script excepted).
# Arguments go to pytest.
#
# Environment:
#   PYTHON                      interpreter that creates .venv-gateway (python3)
#   GATEWAY_START_TIMEOUT_S     how long to wait for the proxy's health route (90)
#   GATEWAY_NETNS               "auto" runs everything in a private network
#                               namespace with loopback only, when `unshare -n`
#                               works here; "off" never does (auto)
set -euo pipefail

SCRIPT_PATH=$(realpath "$0")
cd "$(dirname "$SCRIPT_PATH")/.."

PYTHON=${PYTHON:-python3}
GATEWAY_VENV=.venv-gateway
GATEWAY_STAMP=$GATEWAY_VENV/.installed
BATCHER_PYTHON=.venv/bin/python
START_TIMEOUT_S=${GATEWAY_START_TIMEOUT_S:-90}
GATEWAY_NETNS=${GATEWAY_NETNS:-auto}

log() {
    echo "gateway: $*" >&2
}

install_gateway_venv() {
    if [[ -f $GATEWAY_STAMP && $GATEWAY_STAMP -nt gateway/requirements.txt && $GATEWAY_STAMP -nt gateway/constraints.txt ]]; then
        return 0
    fi

    log "installing the LiteLLM proxy into $GATEWAY_VENV"
    local started_s=$SECONDS
    rm -rf "$GATEWAY_VENV"
    "$PYTHON" -m venv "$GATEWAY_VENV"
    "$GATEWAY_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$GATEWAY_VENV/bin/python" -m pip install --quiet \
        -r gateway/requirements.txt -c gateway/constraints.txt
    touch "$GATEWAY_STAMP"
    log "installed in $((SECONDS - started_s)) s"
}

# The proxy must never reach a provider, and LiteLLM fetches a model cost map
# and may send telemetry unless configured otherwise. A network namespace with
# only loopback turns any such attempt into an immediate local error.
enter_private_network() {
    if [[ $GATEWAY_NETNS == off || -n ${GATEWAY_IN_NETNS:-} ]]; then
        return 0
    fi
    if ! unshare -n true 2>/dev/null; then
        log "unshare -n is not permitted here; running in the host network namespace"
        return 0
    fi

    log "running in a private network namespace (loopback only)"
    GATEWAY_IN_NETNS=1 exec unshare -n bash -c 'ip link set lo up && exec "$0" "$@"' "$SCRIPT_PATH" "$@"
}

pick_free_port() {
    "$BATCHER_PYTHON" -c 'import socket
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    print(probe.getsockname()[1])'
}

stop_proxy() {
    if [[ -z ${proxy_pid:-} ]] || ! kill -0 "$proxy_pid" 2>/dev/null; then
        return 0
    fi

    kill -TERM "$proxy_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$proxy_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$proxy_pid" 2>/dev/null; then
        log "the proxy did not stop within 5 s of SIGTERM; sending SIGKILL"
        kill -KILL "$proxy_pid" 2>/dev/null || true
    fi
    wait "$proxy_pid" 2>/dev/null || true
}

# pytest runs in a process group of its own, so that an interrupted run also
# ends the batcher subprocess of the test in progress.
stop_tests() {
    if [[ -z ${pytest_pid:-} ]] || ! kill -0 "$pytest_pid" 2>/dev/null; then
        return 0
    fi

    kill -TERM -- "-$pytest_pid" 2>/dev/null || true
    wait "$pytest_pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    # A failing step here must not skip the ones after it, stop_proxy above all.
    set +e
    stop_tests
    stop_proxy
    if [[ $status -ne 0 && -f ${work_dir:-}/proxy.log ]]; then
        log "last lines of the proxy log:"
        tail -n 40 "$work_dir/proxy.log" >&2
    fi
    if [[ -n ${work_dir:-} ]]; then
        rm -rf "$work_dir"
    fi
    exit "$status"
}

wait_until_healthy() {
    local health_url=$1
    local started_s=$SECONDS

    while ((SECONDS - started_s < START_TIMEOUT_S)); do
        if ! kill -0 "$proxy_pid" 2>/dev/null; then
            log "the proxy exited before it became healthy"
            return 1
        fi
        if curl --silent --fail --max-time 2 --output /dev/null "$health_url"; then
            log "proxy healthy after $((SECONDS - started_s)) s on $health_url"
            return 0
        fi
        sleep 0.5
    done

    log "the proxy was not healthy after ${START_TIMEOUT_S} s"
    return 1
}

main() {
    if [[ ! -x $BATCHER_PYTHON ]]; then
        log "$BATCHER_PYTHON is missing; run 'make test-gateway', which creates it first"
        exit 2
    fi
    install_gateway_venv
    enter_private_network "$@"

    work_dir=$(mktemp -d -t batcher-gateway.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local port
    port=$(pick_free_port)
    local request_log=$work_dir/requests.jsonl
    : >"$request_log"

    # The proxy exits at start-up without a master key, even though the
    # custom-auth hook decides every request. A random key per run satisfies
    # that check and is never printed.
    local master_key
    master_key=sk-$("$BATCHER_PYTHON" -c 'import secrets; print(secrets.token_hex(24))')

    env -u OPENAI_API_KEY -u OPENAI_BASE_URL \
        LITELLM_MASTER_KEY="$master_key" \
        LITELLM_LOCAL_MODEL_COST_MAP=True \
        LITELLM_TELEMETRY_DISABLED=true \
        GATEWAY_REQUEST_LOG="$request_log" \
        "$GATEWAY_VENV/bin/litellm" --config gateway/config.yaml \
        --host 127.0.0.1 --port "$port" --num_workers 1 \
        >"$work_dir/proxy.log" 2>&1 &
    proxy_pid=$!

    wait_until_healthy "http://127.0.0.1:$port/health/liveliness"

    # In the background, because bash runs a signal trap only once the
    # foreground command has finished, and `wait` returns at once on a signal.
    GATEWAY_BASE_URL="http://127.0.0.1:$port/v1" \
        GATEWAY_REQUEST_LOG="$request_log" \
        setsid "$BATCHER_PYTHON" -m pytest -m gateway tests/gateway "$@" &
    pytest_pid=$!
    wait "$pytest_pid"
}

main "$@"
