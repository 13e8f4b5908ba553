#!/usr/bin/env bash
# Report the dev cluster's daemons and node. Exit 0 when everything is up, 1 otherwise.
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
if [ $rc -eq 0 ]; then
    if slurmctld_ok && node_ok; then
        echo "  node localhost: $(node_state)"
        timeout 5 sinfo -o '  %P %a %l %D %t %c' 2>/dev/null
    else
        echo "  controller or node not answering (node: '$(node_state)')"
        rc=1
    fi
fi
[ $rc -eq 0 ] && echo "export SLURM_CONF=$CONF"
exit $rc
