#!/usr/bin/env bash
# Report the dev cluster's daemons and nodes. Exit 0 when everything is up, 1 otherwise.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rc=0
echo "dev cluster: $DIR"
for d in "${DAEMONS[@]}"; do
    IFS=: read -r name comm pidfile logf <<<"$d"
    pid=$(pid_of "$comm" "$pidfile")
    if [ -n "$pid" ]; then
        printf '  %-10s running  pid %-8s log %s\n' "$name" "$pid" "$logf"
    else
        printf '  %-10s STOPPED                log %s\n' "$name" "$logf"
        rc=1
    fi
done
for node in $(ns_nodes); do
    pid=$(pid_of "slurmd@$node" "$(node_pidfile "$node")")
    if [ -n "$pid" ]; then
        printf '  %-10s running  pid %-8s log %s (namespace %s, %s)\n' "slurmd" "$pid" \
            "$(node_log "$node")" "$node" "$(node_addr "$node")"
    else
        printf '  %-10s STOPPED                log %s (namespace %s)\n' slurmd "$(node_log "$node")" "$node"
        rc=1
    fi
done
if [ $rc -eq 0 ]; then
    if slurmctld_ok && node_ok; then
        for node in localhost $(ns_nodes); do echo "  node $node: $(node_state "$node")"; done
        timeout 5 sinfo -o '  %P %a %l %D %t %c' 2>/dev/null
    else
        echo "  controller or node not answering (node: '$(node_state)')"
        rc=1
    fi
fi
[ $rc -eq 0 ] && echo "export SLURM_CONF=$CONF"
exit $rc
