# RabbitMQ for benchmarks: Debian's rabbitmq-server package, but a throwaway node of our own
# (its own name, ports, epmd and data directory), so nothing on the machine is touched.
#
#   source scripts/lib/rabbitmq.sh
#   rabbitmq_start            # sets amqp_url; say() must be defined
#   ...
#   rabbitmq_stop             # idempotent; call it from the caller's EXIT trap

rabbitmq_install() {
    if ! command -v rabbitmq-server >/dev/null 2>&1 && [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
        if [[ $(id -u) -ne 0 ]]; then
            say "rabbitmq-server is not installed; need root to install it (apt-get install rabbitmq-server)"
            exit 1
        fi
        say "installing Debian's rabbitmq-server package"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >&2
        # The package starts its system service where the init system lets it. The benchmarks
        # never use that node; stop it so it takes no CPU.
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
            systemctl stop rabbitmq-server >&2 || true
        elif command -v service >/dev/null 2>&1; then
            service rabbitmq-server stop >/dev/null 2>&1 || true
        fi
    fi
}

rmq_started=0
rmq_dir=""

rabbitmq_start() {
    rabbitmq_install
    # Debian's /usr/sbin/rabbitmq-* wrappers switch to the rabbitmq user through `su`, which
    # drops the environment that points the node at our directory: call the real scripts.
    rmq_bin=/usr/lib/rabbitmq/bin
    [[ -x $rmq_bin/rabbitmq-server ]] || rmq_bin=$(dirname "$(command -v rabbitmq-server)")
    epmd=$(command -v epmd || echo /usr/lib/erlang/bin/epmd)
    rmq_dir=$(mktemp -d "${TMPDIR:-/tmp}/celeriac-bench-rabbitmq.XXXXXX")
    # Three distinct free ports: AMQP, Erlang distribution, epmd.
    read -r amqp_port dist_port epmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
    # The Erlang cookie lives in $HOME/.erlang.cookie for the node and for rabbitmqctl alike.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$rmq_dir/.erlang.cookie"
    chmod 400 "$rmq_dir/.erlang.cookie"
    echo '[].' >"$rmq_dir/enabled_plugins"
    : >"$rmq_dir/rabbitmq-env.conf"
    # The node's whole environment, for it and for rabbitmqctl (not exported: the caller keeps
    # its HOME).
    rmq_node=celeriac-bench@localhost
    rmq_env=(env HOME="$rmq_dir"
        RABBITMQ_NODENAME=$rmq_node
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$amqp_port"
        RABBITMQ_DIST_PORT="$dist_port"
        ERL_EPMD_PORT="$epmd_port"
        ERL_EPMD_ADDRESS=127.0.0.1
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        RABBITMQ_MNESIA_BASE="$rmq_dir/mnesia"
        RABBITMQ_LOG_BASE="$rmq_dir/log"
        RABBITMQ_PID_FILE="$rmq_dir/pid"
        RABBITMQ_CONF_ENV_FILE="$rmq_dir/rabbitmq-env.conf"
        RABBITMQ_CONFIG_FILE="$rmq_dir/rabbitmq"
        RABBITMQ_ADVANCED_CONFIG_FILE="$rmq_dir/advanced.config"
        RABBITMQ_ENABLED_PLUGINS_FILE="$rmq_dir/enabled_plugins")

    say "starting RabbitMQ node $rmq_node on 127.0.0.1:$amqp_port (data in $rmq_dir)"
    rmq_started=1
    "${rmq_env[@]}" "$rmq_bin/rabbitmq-server" -detached >&2
    if ! timeout 150 "${rmq_env[@]}" "$rmq_bin/rabbitmqctl" -n "$rmq_node" wait --timeout 120 "$rmq_dir/pid" >/dev/null \
        || ! "${rmq_env[@]}" "$rmq_bin/rabbitmqctl" -n "$rmq_node" await_startup --timeout 60 >/dev/null; then
        say "RabbitMQ did not start; its log:"
        tail -n 40 "$rmq_dir"/log/*.log >&2 || true
        exit 1
    fi
    amqp_url="amqp://guest:guest@127.0.0.1:$amqp_port//"
}

rabbitmq_stop() {
    if [[ $rmq_started == 1 ]]; then
        "${rmq_env[@]}" "$rmq_bin/rabbitmqctl" -n "$rmq_node" stop "$rmq_dir/pid" >/dev/null 2>&1 \
            || { [[ -f $rmq_dir/pid ]] && kill -TERM "$(cat "$rmq_dir/pid")" 2>/dev/null; } || true
        # The node started an epmd of its own on ERL_EPMD_PORT; it outlives the node.
        "${rmq_env[@]}" "$epmd" -kill >/dev/null 2>&1 || true
        rmq_started=0
    fi
    [[ -n $rmq_dir ]] && rm -rf "$rmq_dir"
    return 0
}
